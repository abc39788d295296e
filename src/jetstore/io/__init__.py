"""The io layer: files, directories, the instance and database file locks, threads and the
handle registry.

Nothing above this layer calls `os.open`, `os.fsync`, `os.rename` or starts a thread itself:
everything goes through `FileSystem` (which carries the fault-injection and recording hook)
and is counted in a `HandleRegistry`.
"""

from jetstore.io.files import File, FileSystem, IOEvent, IOHook
from jetstore.io.handles import DEFAULT_REGISTRY, Handle, HandleKind, HandleRegistry
from jetstore.io.threads import ManagedThread

__all__ = [
    "DEFAULT_REGISTRY",
    "File",
    "FileSystem",
    "Handle",
    "HandleKind",
    "HandleRegistry",
    "IOEvent",
    "IOHook",
    "ManagedThread",
]
