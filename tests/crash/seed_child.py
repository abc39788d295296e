"""Child process for the seed regression test (Exchange KB Q176239).

Circular logging on, 64 KiB logs, small checkpoint depth; commits forever and prints
`ACK <id>` after each durable commit. While the file named by the LOCK_FLAG argument exists,
every operation on `edb.chk` fails with EACCES, as when a virus scanner or backup agent holds
the checkpoint file (the io-layer variant of "another program locked edb.chk").
"""

from __future__ import annotations

import os
import sys

import jetstore
from jetstore.io import FileSystem, IOEvent


def main(directory: str, start: int, lock_flag: str) -> None:
    def hook(event: IOEvent) -> None:
        if event.path.endswith("edb.chk") and lock_flag and os.path.exists(lock_flag):
            raise PermissionError(13, "edb.chk is held by another program")

    instance = jetstore.open(
        directory,
        filesystem=FileSystem(hook=hook),
        circular_logging=True,
        log_file_size=64 * 1024,
        checkpoint_depth=64 * 1024,
        checkpoint_interval=0.2,
    )
    db = instance.database("main", create=True)
    if "orders" not in db.table_names():
        db.create_table("orders", [("id", "int"), ("note", "text")], primary_key="id")
    print("READY", flush=True)
    order = start
    while True:
        with db.transaction() as txn:
            txn.table("orders").insert({"id": order, "note": "x" * (100 + order % 300)})
        print(f"ACK {order}", flush=True)
        order += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "")
