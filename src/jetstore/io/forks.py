"""Which process is running: a forked child must not use its parent's instance.

`os.fork()` copies every open descriptor, and flock locks belong to the open file
description the parent and the child now share: a child that checkpointed, unlocked or
removed anything would do it to the parent's instance (a child leaving a `with
jetstore.open(...)` block through `sys.exit` released the parent's directory lock and marked
its databases clean while the parent kept writing). `PID` is this process's id, kept up to
date by an at-fork hook, so the engine tells a child from its parent with one comparison and
no system call (`Instance.check_open`, the commit path).

Invariants:
- `PID == os.getpid()` at every moment after this module was imported.
- An object that records `PID` when it is created belongs to that process; in any other
  process it is a copy, to be let go (its descriptors closed, its locks and threads left
  alone: `HandleRegistry.forget_owner`), never used.
"""

from __future__ import annotations

import os

PID = os.getpid()


def _after_fork_in_child() -> None:
    global PID
    PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
