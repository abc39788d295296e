"""Engine threads, registered in the handle registry and stopped deterministically.

A `ManagedThread` runs `target(stop_event)`; `close()` sets the event, calls `wake` (so a
thread sleeping on some other event notices at once) and joins the thread, so an instance that
closes leaves no thread behind. A thread that dies of an exception records it
in `error` (the owner decides what it means) instead of printing a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from jetstore.io.handles import HandleKind, HandleRegistry


class ManagedThread:
    def __init__(
        self,
        registry: HandleRegistry,
        owner: str,
        name: str,
        target: Callable[[threading.Event], None],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._wake = wake
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._handle = registry.register(HandleKind.THREAD, owner, name, self._join)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target(self.stop_event)
        except BaseException as exc:
            self.error = exc

    def _join(self) -> None:
        self.stop_event.set()
        if self._wake is not None:
            self._wake()  # a thread sleeping on its own event must see the stop at once
        if threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._handle.close()
