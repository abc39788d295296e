"""`Store`: an instance directory with one database that tests close and reopen.

Shared by the table and transaction suites (the `store` fixture in `tests/conftest.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jetstore

LOG = 64 * 1024


class Store:
    """An instance directory that tests can close and reopen."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        self.options = {"log_file_size": LOG, **options}
        self.inst = jetstore.open(path, **self.options)
        self.db = self.inst.database("main", create=True)

    def reopen(self) -> None:
        self.inst.close()
        self.inst = jetstore.open(self.path, **self.options)
        self.db = self.inst.database("main")

    def close(self) -> None:
        self.inst.close()

    def read(self, table: str) -> list[dict[str, object]]:
        with self.db.transaction() as txn:
            return list(txn.table(table).scan())

    def checked_twice(self, check: Callable[[], None]) -> None:
        """Run `check`, reopen the instance, run it again."""
        check()
        self.reopen()
        check()
