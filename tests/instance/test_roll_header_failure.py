"""A flush whose records are synced but whose database headers cannot learn the new
generation (D8's `on_roll`): its commits are durable though none is acknowledged. The
committers must hear that, under the cause's own error class, not a log write failure."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import JetError, LogWriteFail
from jetstore.io import FileSystem, IOEvent

OPTIONS = {"log_file_size": 64 * 1024, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}


def test_a_commit_whose_roll_cannot_write_the_headers_is_reported_durable(
    tmp_path: Path,
) -> None:
    armed = {"on": False}

    def hook(event: IOEvent) -> None:
        if armed["on"] and event.op == "write" and event.path.endswith("main.edb"):
            raise OSError(errno.EPERM, "injected: the database file refuses writes")

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    armed["on"] = True  # no checkpoint runs: the only write to main.edb is a roll's header
    acknowledged: list[int] = []
    failure: tuple[int, JetError] | None = None
    for first in range(0, 3000, 10):
        try:
            with db.transaction() as txn:
                for i in range(first, first + 10):
                    txn.table("t").insert({"id": i, "v": "x" * 200})
        except JetError as exc:
            failure = (first, exc)
            # Durable but not acknowledged: only the reopen can say so for certain.
            assert txn.state.value == "in doubt"
            break
        acknowledged.extend(range(first, first + 10))
    assert failure is not None, "a roll should have tried to write the header"
    first, error = failure
    assert not isinstance(error, LogWriteFail)
    assert error.path is not None and error.path.endswith("main.edb")
    assert "durable" in str(error) and "next open replays them" in str(error)
    # The instance writes no more log: later commits fail (the failure is sticky).
    with pytest.raises(JetError) as later, db.transaction() as txn:
        txn.table("t").insert({"id": 10**6, "v": "late"})
    assert str(later.value).count("What to do") == 1  # the cause's advice comes first in it
    instance.simulate_crash()
    with (
        jetstore.open(tmp_path, **OPTIONS) as reopened,
        reopened.database("main").transaction() as txn,
    ):
        ids = [row["id"] for row in txn.table("t").scan()]
    assert ids == [*acknowledged, *range(first, first + 10)]
