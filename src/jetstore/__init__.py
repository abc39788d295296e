"""jetstore: a crash-safe embedded transactional storage engine in the lineage of ESE.

    import jetstore

    with jetstore.open("/path/to/instance") as instance:
        db = instance.database("main", create=True)
        db.create_table("users", [("id", "int"), ("name", "text")], primary_key="id")
        with db.transaction() as txn:
            txn.table("users").insert({"id": 1, "name": "Ada"})

The package is layered; each sub-package owns one job (docs/design.md):
io -> format -> log -> pages -> tables -> transactions -> instance -> cli.
"""

# isort: off
# First: a Ctrl-C while the `jetstore` command imports everything below ends it quietly.
import jetstore._startup  # noqa: F401  (installs its handler in that process only)

# isort: on
import logging

from jetstore import errors
from jetstore._version import __version__
from jetstore.backup.restore import RestorePlan, RestoreResult, restore
from jetstore.backup.verify import BackupVerification, verify_backup
from jetstore.errors import JetError, describe
from jetstore.format.positions import LogPosition
from jetstore.instance.database import Database
from jetstore.instance.instance import Instance, InstanceOptions, open_instance
from jetstore.tables.schema import Column, ColumnType, IndexDef
from jetstore.tables.table import Table
from jetstore.transactions.transaction import Transaction

# A library never configures logging; the application decides where events go.
logging.getLogger("jetstore").addHandler(logging.NullHandler())

open = open_instance

__all__ = [
    "BackupVerification",
    "Column",
    "ColumnType",
    "Database",
    "IndexDef",
    "Instance",
    "InstanceOptions",
    "JetError",
    "LogPosition",
    "RestorePlan",
    "RestoreResult",
    "Table",
    "Transaction",
    "__version__",
    "describe",
    "errors",
    "open",
    "restore",
    "verify_backup",
]
