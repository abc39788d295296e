"""Ctrl-C at a chosen point: tests that deliver a KeyboardInterrupt where a signal handler
could raise it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def interrupt_once(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    when: Callable[..., bool] | None = None,
    *,
    after: bool = False,
) -> list[bool]:
    """Make `owner.name` raise KeyboardInterrupt at its first call (for which `when(*args)`
    holds), as a Ctrl-C delivered there would; later calls run the original. With `after`,
    the original runs first and its result is lost, as when the Ctrl-C lands as the call
    returns, before the caller stored the result. The list returned holds True once it
    fired."""
    original = getattr(owner, name)
    fired: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if not fired and (when is None or when(*args)):
            fired.append(True)
            if after:
                original(*args, **kwargs)
            raise KeyboardInterrupt("Ctrl-C")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return fired
