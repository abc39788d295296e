"""Interrupts forced at chosen points, for the tests that check nothing is left open."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from jetstore.io.files import FileSystem


@contextmanager
def interrupt_as_call_returns(
    function: Callable[..., Any], when: Callable[[dict[str, Any]], bool]
) -> Iterator[None]:
    """KeyboardInterrupt as the first call of `function` whose arguments (its frame's
    locals) satisfy `when` returns (a signal handler runs where a call returns)."""
    code = function.__code__
    fired = False

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal fired
        if event == "return" and not fired and when(frame.f_locals):
            fired = True
            raise KeyboardInterrupt
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        return local if frame.f_code is code else None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)
    assert fired


def interrupt_as_open_returns(suffix: str) -> Any:
    """KeyboardInterrupt as the first `FileSystem.open` of a path ending in `suffix` returns
    its file."""
    return interrupt_as_call_returns(
        FileSystem.open, lambda args: str(args["path"]).endswith(suffix)
    )
