"""Child process for the kill tests: commits forever and reports each acknowledgement.

Each transaction inserts one order and bumps its customer's counter row, so a partial
transaction would show as a counter that disagrees with the orders present. A line
`ACK <order_id>` is printed (and flushed) only after `commit()` returned.
"""

from __future__ import annotations

import sys

import jetstore

CUSTOMERS = 7


def main(directory: str, start: int, lazy_every: int) -> None:
    instance = jetstore.open(
        directory, log_file_size=64 * 1024, checkpoint_depth=64 * 1024, checkpoint_interval=0.2
    )
    db = instance.database("main", create=True)
    if "orders" not in db.table_names():
        with db.transaction() as txn:
            txn.create_table(
                "orders",
                [("id", "int"), ("customer", "int"), ("note", "text")],
                primary_key="id",
                indexes=[("by_customer", ["customer"])],
            )
            txn.create_table("counters", [("customer", "int"), ("n", "int")], "customer")
            for c in range(CUSTOMERS):
                txn.table("counters").insert({"customer": c, "n": 0})
    print("READY", flush=True)
    order = start
    while True:
        customer = order % CUSTOMERS
        txn = db.transaction()
        txn.table("orders").insert({"id": order, "customer": customer, "note": "n" * (order % 500)})
        counters = txn.table("counters")
        row = counters.get(customer)
        assert row is not None
        counters.update(customer, {"n": row["n"] + 1})
        lazy = lazy_every > 0 and order % lazy_every == 0
        txn.commit(lazy=lazy)
        if not lazy:
            print(f"ACK {order}", flush=True)
        order += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
