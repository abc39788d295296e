"""Every error jetstore reports, named and numbered as in ESE (JET Blue).

This module owns the engine's error vocabulary: one ``JetError`` subclass per ESE error the
engine can raise, the category classes they hang under (PEP 249 names where they fit), the
registry from number to class, ``describe()`` for admins who paste a number from a log, and
``from_os_error()``, the single place where an ``OSError`` becomes an engine error.

Invariants (checked when each class is created, and again by ``tests/test_errors.py``):

* Every concrete error has a negative ``code`` equal to ESE's number for the error of the same
  name in ``jethdr.w``, so an admin's knowledge of ESE carries over.
* ``name`` is ESE's name without the ``JET_err`` prefix and equals the class name;
  ``ese_name`` is ``"JET_err" + name``.
* Codes and names are unique: ``ERRORS_BY_CODE`` maps each code to exactly one class.
* Every concrete error has a non-empty ``description`` (what it means) and ``hint`` (what an
  operator should do), and a ``category`` from ``CATEGORIES``.
* Instances are picklable (they cross process boundaries) and keep ``detail``, ``path``,
  ``hint`` and ``errno`` across the round trip.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import errno as _errno
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Final

__all__ = [
    "CATEGORIES",
    "ERRORS_BY_CODE",
    "ERRORS_BY_NAME",
    "AccessDenied",
    "AttachedDatabaseMismatch",
    "BackupAbortByServer",
    "BackupInProgress",
    "BadCheckpointSignature",
    "BadLogSignature",
    "BadLogVersion",
    "CheckpointCorrupt",
    "CheckpointDepthTooDeep",
    "CheckpointFileNotFound",
    "ColumnDuplicate",
    "ColumnIndexed",
    "ColumnNotFound",
    "CommittedLogFilesMissing",
    "ConsistentTimeMismatch",
    "CorruptionError",
    "DataError",
    "DatabaseCorrupted",
    "DatabaseDirtyShutdown",
    "DatabaseDuplicate",
    "DatabaseError",
    "DatabaseInUse",
    "DatabaseIncompleteUpgrade",
    "DatabaseInvalidName",
    "DatabaseLogSetMismatch",
    "DatabaseNotFound",
    "DbTimeTooNew",
    "DbTimeTooOld",
    "DiskFull",
    "DiskIO",
    "EndingRestoreLogTooLow",
    "Error",
    "ErrorInfo",
    "FileAccessDenied",
    "FileAlreadyExists",
    "FileInvalidType",
    "FileNotFound",
    "GivenLogFileHasBadSignature",
    "GivenLogFileIsNotContiguous",
    "IOFailure",
    "InconsistentError",
    "IndexDuplicate",
    "IndexNotFound",
    "InstanceNameInUse",
    "InstanceUnavailable",
    "IntegrityError",
    "InternalError",
    "InvalidBackup",
    "InvalidBackupSequence",
    "InvalidColumnType",
    "InvalidLogSequence",
    "InvalidParameter",
    "InvalidPath",
    "JetError",
    "KeyDuplicate",
    "KeyTooBig",
    "KeyTruncated",
    "LogCorrupted",
    "LogDisabledDueToRecoveryFailure",
    "LogDiskFull",
    "LogFileCorrupt",
    "LogFileNotCopied",
    "LogFileSizeMismatch",
    "LogGenerationMismatch",
    "LogReadVerifyFailure",
    "LogSequenceChecksumMismatch",
    "LogSequenceEnd",
    "LogWriteFail",
    "LoggingDisabled",
    "MissingCurrentLogFiles",
    "MissingFullBackup",
    "MissingLogFile",
    "MissingPreviousLogFile",
    "MissingRestoreLogFiles",
    "NoBackup",
    "NoCurrentRecord",
    "NotInTransaction",
    "NotInitialized",
    "NullInvalid",
    "ObjectNotFound",
    "OperationalError",
    "OutOfBuffers",
    "OutOfDatabaseSpace",
    "OutOfFileHandles",
    "OutOfMemory",
    "OutOfSessions",
    "PageNotInitialized",
    "ProgrammingError",
    "ReadLostFlushVerifyFailure",
    "ReadPgnoVerifyFailure",
    "ReadVerifyFailure",
    "RecordNotFound",
    "RecordTooBig",
    "RecoveredWithErrors",
    "RecoveredWithoutUndo",
    "RedoAbruptEnded",
    "RequiredLogFilesMissing",
    "ResourceError",
    "SessionWriteConflict",
    "SoftRecoveryOnBackupDatabase",
    "StartingRestoreLogTooHigh",
    "StateError",
    "TableDuplicate",
    "TermInProgress",
    "TooManyOpenDatabases",
    "TransReadOnly",
    "TransTooDeep",
    "TransactionTooLong",
    "TransientError",
    "UsageError",
    "VersionStoreOutOfMemory",
    "WriteConflict",
    "describe",
    "error_class",
    "from_os_error",
    "normalize_code",
]

#: The categories an error can belong to. The CLI maps them to exit codes and JSON.
#:
#: * ``operation``: the engine or instance cannot carry on (fatal, needs reopen or a bug).
#: * ``io``: the operating system refused or failed a file operation.
#: * ``resource``: something ran out (disk, memory, handles, log generations, sessions).
#: * ``corruption``: bytes on disk fail a checksum or structural check.
#: * ``inconsistent``: files are individually fine but do not belong together, or need recovery.
#: * ``usage``: the caller asked for something invalid (bad argument, unknown object).
#: * ``state``: the call is valid but not in the current state (no transaction, no backup, ...).
#: * ``conflict``: another writer or an existing entry is in the way (duplicates, write locks).
CATEGORIES: Final = (
    "operation",
    "io",
    "resource",
    "corruption",
    "inconsistent",
    "usage",
    "state",
    "conflict",
)

_ESE_PREFIX: Final = "JET_err"
_U32: Final = 1 << 32
_I32_MIN: Final = -(1 << 31)
_I32_LIMIT: Final = 1 << 31

#: Every concrete error class by its (negative) ESE number. Filled in by ``__init_subclass__``.
ERRORS_BY_CODE: dict[int, type[JetError]] = {}
#: Every concrete error class by ``name`` (ESE name without ``JET_err``).
ERRORS_BY_NAME: dict[str, type[JetError]] = {}
# Case-insensitive lookup: both "filenotfound" and "jet_errfilenotfound".
_BY_FOLDED_NAME: dict[str, type[JetError]] = {}


def _restore(cls: type[JetError], args: tuple[Any, ...], state: dict[str, Any]) -> JetError:
    """Unpickle helper: rebuild without calling ``__init__`` (see ``JetError.__reduce__``)."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class JetError(Exception):
    """Base of every error the engine reports.

    ``str(err)`` reads ``"JET_errFileNotFound (-1811): <detail>. What to do: <hint>"``. The
    detail should name the file, page or log position involved; when it is empty the class
    description is shown instead.
    """

    code: ClassVar[int] = 0
    name: ClassVar[str] = "JetError"
    ese_name: ClassVar[str] = "JetError"
    description: ClassVar[str] = "An error reported by the storage engine"
    category: ClassVar[str] = "operation"
    #: True when simply retrying the operation (a new transaction) can succeed.
    retryable: ClassVar[bool] = False
    #: The class-level hint is the typical fix; an instance may carry a more specific one.
    hint: str = ""

    detail: str
    path: str | None
    errno: int | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            if cls.code == 0:  # a category class, not an ESE error
                cls.name = cls.__name__
                cls.ese_name = cls.__name__
            return  # a subclass of a concrete error keeps its parent's identity
        _register(cls)

    def __init__(
        self, detail: str = "", *, hint: str | None = None, path: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.path = path
        self.hint = type(self).hint if hint is None else hint
        self.errno = None

    def __str__(self) -> str:
        text = self.brief()
        if self.hint:
            sep = " " if text.endswith(("?", "!")) else ". "
            text = f"{text}{sep}What to do: {self.hint}"
        return text

    def brief(self) -> str:
        """`str()` without the hint: the error named inside another message (an event's, or
        an error's that it caused), which says what to do at its own end."""
        head = f"{self.ese_name} ({self.code})" if self.code else self.ese_name
        message = (self.detail or self.description).rstrip(". ")
        return f"{head}: {message}" if message else head

    def __repr__(self) -> str:
        parts = [repr(self.detail)]
        if self.path is not None:
            parts.append(f"path={self.path!r}")
        if self.hint != type(self).hint:
            parts.append(f"hint={self.hint!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's default reduce would call cls(*args), which cannot restore the
        # keyword-only fields; rebuild from args and the instance dict instead.
        return (_restore, (type(self), self.args, dict(self.__dict__)))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as the CLI's ``--json`` error object uses it."""
        return {
            "code": self.code,
            "name": self.name,
            "ese_name": self.ese_name,
            "category": self.category,
            "message": str(self),
            "detail": self.detail,
            "hint": self.hint,
            "path": self.path,
            "errno": self.errno,
        }


def _register(cls: type[JetError]) -> None:
    code = cls.__dict__["code"]
    name = cls.__dict__.get("name", cls.__name__)
    if not isinstance(code, int) or isinstance(code, bool) or not _I32_MIN <= code < 0:
        raise TypeError(f"{cls.__qualname__}: code must be a negative 32-bit int, got {code!r}")
    if name != cls.__name__:
        raise TypeError(f"{cls.__qualname__}: name {name!r} must equal the class name")
    if code in ERRORS_BY_CODE:
        other = ERRORS_BY_CODE[code].__qualname__
        raise TypeError(f"{cls.__qualname__}: code {code} is already used by {other}")
    if name in ERRORS_BY_NAME:
        raise TypeError(f"{cls.__qualname__}: name {name!r} is already registered")
    if not cls.description.strip() or not cls.hint.strip():
        raise TypeError(f"{cls.__qualname__}: description and hint must not be empty")
    if cls.category not in CATEGORIES:
        raise TypeError(f"{cls.__qualname__}: unknown category {cls.category!r}")
    cls.name = name
    cls.ese_name = _ESE_PREFIX + name
    ERRORS_BY_CODE[code] = cls
    ERRORS_BY_NAME[name] = cls
    _BY_FOLDED_NAME[name.casefold()] = cls
    _BY_FOLDED_NAME[cls.ese_name.casefold()] = cls


#: PEP 249 aliases for the base class.
Error = JetError
DatabaseError = JetError


# --- category classes --------------------------------------------------------------------


class TransientError(JetError):
    """Mixin: the failure is temporary; retrying the operation in a new transaction may work."""

    retryable = True


class OperationalError(JetError):
    """The engine could not carry out the operation for reasons outside the caller's code."""

    category = "operation"


class IOFailure(OperationalError):
    """The operating system failed or refused a file operation."""

    category = "io"


class ResourceError(OperationalError):
    """A limited resource ran out: disk, memory, handles, sessions, log generations."""

    category = "resource"


class DataError(JetError):
    """Data on disk is damaged or does not fit together."""

    category = "corruption"


class CorruptionError(DataError):
    """Bytes on disk failed a checksum or structural check."""

    category = "corruption"


class InconsistentError(DataError):
    """Files are readable but do not belong together, are missing, or need recovery first."""

    category = "inconsistent"


class IntegrityError(JetError):
    """The change would break a uniqueness or nullability rule."""

    category = "conflict"


class ProgrammingError(JetError):
    """The caller used the API wrongly."""

    category = "usage"


class UsageError(ProgrammingError):
    """An argument or a named object is invalid."""

    category = "usage"


class StateError(ProgrammingError):
    """The call is not valid in the current state of the instance, session or backup."""

    category = "state"


# --- hint fragments shared by several errors ---------------------------------------------

_DIAGNOSE = "Run `jetstore logs verify DIR` to see which files are present and what they contain"
_DIAGNOSE_LC = "r" + _DIAGNOSE[1:]
_RESTORE = "restore the database from a backup"
_LOSSY = (
    "if no copy exists, `jetstore recover --accept-data-loss DIR` brings the database to a "
    "consistent state without the missing transactions"
)


def page_damage_hint(path: str | None, lead: str = "") -> str:
    """What to do about damage in the database file `path` (None: not known here): the
    tools that look at a database's pages, not `logs verify`, which reads only the logs."""
    target = f"'{path}'" if path else "DB.edb"
    return (
        f"{lead}Check the storage (disk errors in the system log, failing hardware). With the "
        f"instance closed, `jetstore integrity {target}` shows what else is damaged; "
        f"{_RESTORE}, or if there is none, `jetstore repair {target}` salvages what it can "
        "(with --accept-data-loss it keeps the result)."
    )


_CORRUPT = page_damage_hint(None)


# --- internal / engine state ------------------------------------------------------------


class InternalError(JetError):
    description = "The engine reached a state it considers impossible (a bug)"
    hint = (
        "Report it with the full message and `jetstore logs verify DIR` output; reopening the "
        "instance runs recovery and normally restores service."
    )
    code = -107


class OutOfThreads(ResourceError):
    description = "The process could not start a thread"
    hint = (
        "Raise the process's thread limit (`ulimit -u`, the container's pids limit) or give "
        "it more memory, close other instances in this process, then retry."
    )
    code = -103


class TermInProgress(StateError):
    description = "The instance is shutting down and accepts no new work"
    hint = "Wait for the shutdown to finish, then reopen the instance."
    code = -1000


class NotInitialized(StateError):
    description = "The instance is not open, or was already closed"
    hint = "Open the instance before using it, and do not use handles after it is closed."
    code = -1029


class InstanceNameInUse(OperationalError):
    category = "conflict"
    description = "Another open instance already uses this name or directory"
    hint = (
        "Close the other instance or process using this directory (the message names its "
        "process id), or choose a different directory."
    )
    code = -1086


class InstanceUnavailable(OperationalError):
    description = "The instance hit a fatal error earlier and refuses further work"
    hint = (
        "Look at the first error reported before this one and fix its cause, then close and "
        "reopen the instance; recovery runs on open."
    )
    code = -1090


# --- logging and recovery ---------------------------------------------------------------


class LogFileCorrupt(CorruptionError):
    description = "A log file's header or a block in it fails its checksum"
    hint = (
        f"{_DIAGNOSE}. If the damage is in the last generation after a crash, "
        f"`jetstore recover DIR` may handle it; otherwise {_RESTORE}."
    )
    code = -501


class BackupInProgress(OperationalError):
    category = "conflict"
    description = "A backup is already running on this instance"
    hint = "Wait for the running backup to finish or stop it before starting another."
    code = -505


class MissingPreviousLogFile(InconsistentError):
    description = "The log generation the checkpoint points at, or the oldest needed, is missing"
    hint = f"{_DIAGNOSE}. Put the missing log file back or {_RESTORE}; {_LOSSY}."
    code = -509


class LogWriteFail(IOFailure):
    description = "Writing to the log failed, so the instance stopped accepting updates"
    hint = (
        "Check the log volume (space, permissions, disk errors in the system log), then close "
        "and reopen the instance; recovery replays everything that was committed."
    )
    code = -510


class LogDisabledDueToRecoveryFailure(OperationalError):
    description = "Recovery failed, so logging is switched off and no update can be made"
    hint = (
        "Fix the error that made recovery fail (reported earlier), then reopen the instance; "
        f"{_DIAGNOSE_LC}."
    )
    code = -511


class LogGenerationMismatch(InconsistentError):
    description = "A log file's name does not match the generation written in its header"
    hint = (
        "A log file was renamed or copied over another. Restore the original file names; "
        f"{_DIAGNOSE_LC}."
    )
    code = -513


class BadLogVersion(InconsistentError):
    description = "A log file was written by an incompatible version of the engine"
    hint = (
        "Open the directory with the jetstore version that wrote it, or recover it there and "
        "shut down cleanly before upgrading."
    )
    code = -514


class InvalidLogSequence(InconsistentError):
    description = "A log file does not follow on from the previous generation"
    hint = (
        "Log files from different histories were mixed in one directory. "
        f"{_DIAGNOSE}, remove the stray files, or {_RESTORE}."
    )
    code = -515


class LoggingDisabled(StateError):
    description = "The operation needs the log, but logging is not active"
    hint = "Open the instance with logging enabled to use this operation."
    code = -516


class LogSequenceEnd(ResourceError):
    description = "The log generation number has reached its maximum"
    hint = (
        "Shut the instance down cleanly, take a full backup, then delete the log files and "
        "checkpoint file so numbering starts again."
    )
    code = -519


class NoBackup(StateError):
    description = "The call needs a backup in progress, and none is"
    hint = "Start a backup before calling this backup step."
    code = -520


class InvalidBackupSequence(StateError):
    description = "Backup steps were called out of order, or a backup file is still open"
    hint = "Follow the backup sequence: begin, copy files, close each file, truncate, end."
    code = -521


class InvalidBackup(UsageError):
    description = "An incremental backup was requested while circular logging is on"
    hint = (
        "Take a full backup instead, or turn circular logging off so log files are kept for "
        "incremental backups."
    )
    code = -526


class RecoveredWithErrors(InconsistentError):
    description = "Restore finished, but some databases could not be recovered"
    hint = f"{_DIAGNOSE}; restore the databases named in the detail from another backup."
    code = -527


class MissingLogFile(InconsistentError):
    description = "A log generation needed for recovery is missing (the current or a middle one)"
    hint = f"{_DIAGNOSE}. Put the missing log file back or {_RESTORE}; {_LOSSY}."
    code = -528


class LogDiskFull(ResourceError):
    description = "The volume holding the log files is full"
    hint = (
        "Free space on the log volume (or move the logs to a larger one), then reopen the "
        "instance; committed work is safe."
    )
    code = -529


class BadLogSignature(InconsistentError):
    description = "A log file belongs to a different log set than the others"
    hint = (
        "Log files from another instance or history are in this directory. "
        f"{_DIAGNOSE}, remove the stray files, or {_RESTORE}."
    )
    code = -530


class BadCheckpointSignature(InconsistentError):
    description = "The checkpoint file belongs to a different log set"
    hint = (
        "The checkpoint file (edb.chk) comes from another instance. Remove it and run "
        "`jetstore recover DIR`, which rebuilds the checkpoint from the logs."
    )
    code = -532


class CheckpointCorrupt(CorruptionError):
    description = "The checkpoint file fails its checksum or cannot be read"
    hint = (
        "Move edb.chk aside and run `jetstore recover DIR`; recovery then starts from the "
        "oldest log generation the databases need."
    )
    code = -533


class RedoAbruptEnded(CorruptionError):
    description = "Replay stopped early because a log file could not be read to its end"
    hint = (
        "Run `jetstore logs verify DIR` to find the damaged log generation. Put an intact copy "
        f"back or "
        f"{_RESTORE}; {_LOSSY}."
    )
    code = -536


class DatabaseLogSetMismatch(InconsistentError):
    description = "The database does not belong to the log files in this directory"
    hint = (
        "The database and the logs come from different instances or histories. "
        f"{_DIAGNOSE}; put the matching logs or database back, or {_RESTORE}."
    )
    code = -539


class LogFileSizeMismatch(InconsistentError):
    # Each log file records its own size (the option may change between opens), so the
    # only way to a mismatch is a file cut or extended after it was written.
    description = "A log file's size differs from the size its header records"
    hint = (
        "The file was cut short or extended after it was written (log files are written at "
        "full size before use; no crash does this). Put the complete file back or "
        f"{_RESTORE}; {_LOSSY}."
    )
    code = -541


class CheckpointFileNotFound(InconsistentError):
    description = "The checkpoint file is missing"
    hint = (
        "Check that edb.chk exists in the instance directory. `jetstore recover DIR` rebuilds it "
        "from the log files and databases."
    )
    code = -542


class RequiredLogFilesMissing(InconsistentError):
    description = "Log generations the database needs to become consistent are missing"
    hint = f"{_DIAGNOSE}. Put the missing log files back or {_RESTORE}; {_LOSSY}."
    code = -543


class SoftRecoveryOnBackupDatabase(UsageError):
    description = "Ordinary recovery was attempted on a database copied from a backup"
    hint = "Use restore for databases that come from a backup, not recover."
    code = -544


class DatabaseDirtyShutdown(InconsistentError):
    description = "The database was not shut down cleanly and needs recovery before use"
    hint = (
        "Run `jetstore recover DIR` with the instance's log files present; recovery replays the "
        "logs and marks the database clean."
    )
    code = -550


class ConsistentTimeMismatch(InconsistentError):
    description = "The database's last clean-shutdown time does not match the logs' record of it"
    hint = (
        "The database file was replaced by an older or newer copy. "
        f"{_DIAGNOSE}; put the matching database back or {_RESTORE}."
    )
    code = -551


class EndingRestoreLogTooLow(InconsistentError):
    description = "The backup's log files end before the generation the restore needs"
    hint = "Add the later log files to the backup set, or restore from a complete backup."
    code = -553


class StartingRestoreLogTooHigh(InconsistentError):
    description = "The backup's log files start after the generation the restore needs"
    hint = "Add the earlier log files to the backup set, or restore from a complete backup."
    code = -554


class GivenLogFileHasBadSignature(InconsistentError):
    description = "A log file in the backup set belongs to a different log set"
    hint = "Remove log files from other backups or instances from the restore set."
    code = -555


class GivenLogFileIsNotContiguous(InconsistentError):
    description = "The log files in the backup set have a gap between generations"
    hint = "Add the missing generations to the restore set, or restore from a complete backup."
    code = -556


class MissingRestoreLogFiles(InconsistentError):
    description = "Some log files of the backup set are missing"
    hint = "Copy the full backup set again, including every log file, and retry the restore."
    code = -557


class MissingFullBackup(StateError):
    description = "An incremental backup was requested before any full backup"
    hint = "Take a full backup first; incremental backups build on it."
    code = -560


class DatabaseIncompleteUpgrade(InconsistentError):
    description = "The database was only partly converted to the current format"
    hint = f"The conversion was interrupted; {_RESTORE} and run the upgrade again."
    code = -563


class MissingCurrentLogFiles(InconsistentError):
    description = "The most recent log files are missing"
    hint = f"{_DIAGNOSE}. Put the current log files back or {_RESTORE}; {_LOSSY}."
    code = -565


class DbTimeTooOld(CorruptionError):
    description = "A page is older than the log expects: a write to the database was lost"
    hint = f"The storage lost a write. {_CORRUPT}"
    code = -566


class DbTimeTooNew(CorruptionError):
    description = "A page is newer than the log expects: the database and log diverged"
    hint = (
        "The database file does not match the logs (copied at the wrong moment, or a lost log "
        f"write). {_CORRUPT}"
    )
    code = -567


class RecoveredWithoutUndo(InconsistentError):
    description = "Recovery replayed the logs but skipped the undo phase, as requested"
    hint = "Run `jetstore recover DIR` without skipping undo before using the database."
    code = -579


class CommittedLogFilesMissing(InconsistentError):
    description = "Logs holding committed transactions are missing; recent commits would be lost"
    hint = f"{_DIAGNOSE}. Put the missing log files back or {_RESTORE}; {_LOSSY}."
    code = -582


class LogSequenceChecksumMismatch(CorruptionError):
    description = "The running checksum carried between log generations does not match"
    hint = (
        "A log file was damaged or replaced by one from another history. "
        f"{_DIAGNOSE}; put the original back or {_RESTORE}."
    )
    code = -590


class LogReadVerifyFailure(CorruptionError):
    description = "A log file failed its checksum while being read for a backup"
    hint = (
        "The log on disk is damaged; the backup is not usable. Check the storage, then take a "
        "fresh full backup."
    )
    code = -612


class CheckpointDepthTooDeep(TransientError, ResourceError):
    description = "Too many log generations lie between the checkpoint and the current one"
    hint = (
        "The checkpoint is not advancing. Check that edb.chk and the database files are "
        "writable and the disk is healthy; updates resume by themselves when the checkpoint "
        "catches up."
    )
    code = -614


class LogFileNotCopied(StateError):
    description = "Log truncation was requested before every needed log was copied to the backup"
    hint = "Copy all log files the backup asks for before truncating the logs."
    code = -616


class TransactionTooLong(ResourceError):
    description = "A transaction has been open across too many log generations"
    hint = (
        "Commit or roll back long-running transactions; split large jobs into smaller transactions."
    )
    code = -618


class BackupAbortByServer(OperationalError):
    description = "The backup was stopped by the engine (shutdown or an explicit stop)"
    hint = "Start the backup again once the instance is running normally."
    code = -801


# --- general API errors -----------------------------------------------------------------


class InvalidParameter(UsageError, ValueError):
    description = "An argument is invalid"
    hint = "Check the value named in the message against the documentation and try again."
    code = -1003


class OutOfMemory(ResourceError):
    description = "The process ran out of memory"
    hint = "Reduce the cache size or the size of transactions, or give the process more memory."
    code = -1011


class OutOfDatabaseSpace(ResourceError):
    description = "The database reached its configured maximum size"
    hint = "Raise the maximum database size, or delete data and compact the database."
    code = -1012


class OutOfBuffers(ResourceError):
    description = "No page buffer is free in the cache"
    hint = "Increase the cache size, or reduce the number of concurrent or large transactions."
    code = -1014


class ReadVerifyFailure(CorruptionError):
    description = "A database page failed its checksum when read"
    hint = f"The page named in the detail is damaged. {_CORRUPT}"
    code = -1018


class PageNotInitialized(CorruptionError):
    description = "A page that should hold data is blank"
    hint = f"The page named in the detail was never written or was zeroed. {_CORRUPT}"
    code = -1019


class OutOfFileHandles(ResourceError):
    description = "The process cannot open more files"
    hint = (
        "Raise the open-file limit (`ulimit -n`) or close other instances and handles in this "
        "process."
    )
    code = -1020


class DiskIO(IOFailure):
    description = "The operating system reported an I/O error"
    hint = (
        "Check the disk named in the detail (system log, SMART data, cabling, network storage), "
        f"then reopen the instance; {_DIAGNOSE_LC}."
    )
    code = -1022


class InvalidPath(UsageError):
    description = (
        "A file path is invalid (empty, too long, a parent is not a directory, a directory "
        "where a file belongs or the reverse, or a place that cannot hold the engine's files)"
    )
    hint = "Check the path in the message: every parent must be an existing directory."
    code = -1023


class FileAlreadyExists(UsageError):
    description = "A file the engine was to create already exists"
    hint = (
        "Move the existing file away or give another path, then retry: the engine does not "
        "overwrite a file it did not expect."
    )
    code = -1814


class RecordTooBig(UsageError):
    description = "The record is larger than the maximum record size"
    hint = "Store large values in long-value columns, or split the record."
    code = -1026


class TooManyOpenDatabases(ResourceError):
    description = "The instance cannot attach more databases"
    hint = "Detach databases that are not in use, or raise the limit on attached databases."
    code = -1027


class FileAccessDenied(IOFailure):
    description = "The file cannot be opened: permission denied, read-only, or locked"
    hint = (
        "Check the file's permissions and that its volume is writable, and make sure no other "
        "process has the instance open (the message names the lock holder's process id)."
    )
    code = -1032


class NotInTransaction(StateError):
    description = "The operation needs an open transaction"
    hint = "Begin a transaction first (`with db.transaction() as txn:`)."
    code = -1054


class VersionStoreOutOfMemory(ResourceError):
    description = "Uncommitted changes outgrew the memory set aside for them"
    hint = (
        "Commit in smaller transactions and end long-running readers, or raise the version "
        "store size."
    )
    code = -1069


class OutOfSessions(ResourceError):
    description = "All sessions of the instance are in use"
    hint = "End sessions that are no longer needed, or raise the session limit."
    code = -1101


class WriteConflict(TransientError, OperationalError):
    category = "conflict"
    description = "Another transaction changed the same record first"
    hint = "Roll back and retry the transaction; the conflict is transient."
    code = -1102


class TransTooDeep(UsageError):
    description = "Transactions are nested deeper than allowed"
    hint = "Commit or roll back inner transactions before beginning new ones."
    code = -1103


class TransReadOnly(UsageError):
    description = "A read-only transaction tried to change the database"
    hint = "Begin a read-write transaction for updates."
    code = -1110


class SessionWriteConflict(UsageError):
    description = "Two cursors in one session tried to update the same record"
    hint = "Update a record through one cursor at a time within a session."
    code = -1111


class ReadPgnoVerifyFailure(CorruptionError):
    description = "A page read from disk carries a different page number than requested"
    hint = f"The storage returned the wrong block. {_CORRUPT}"
    code = -1118


class ReadLostFlushVerifyFailure(CorruptionError):
    description = "A page read from disk is missing a write that was made to it earlier"
    hint = f"The storage lost a write. {_CORRUPT}"
    code = -1119


# --- databases, tables, indexes, columns ------------------------------------------------


class DatabaseDuplicate(IntegrityError):
    description = "A database with this name already exists"
    hint = "Choose another name, or open the existing database instead of creating it."
    code = -1201


class DatabaseInUse(OperationalError):
    category = "conflict"
    description = "The database is in use by another session or instance"
    hint = "Close the other user of the database first (commit or roll back its transactions)."
    code = -1202


class DatabaseNotFound(UsageError):
    description = "No database with this name is attached"
    hint = "Check the name, or attach or create the database first."
    code = -1203


class DatabaseInvalidName(UsageError):
    description = "The database name is not valid"
    hint = "Use a plain file name ending in .edb."
    code = -1204


class DatabaseCorrupted(CorruptionError):
    description = "The database file is damaged or is not a database"
    hint = _CORRUPT
    code = -1206


class InvalidDatabaseVersion(InconsistentError):
    description = "The database file was written in another on-disk format version"
    hint = (
        "The file is intact, not damaged: do not repair it. Open it with the jetstore release "
        "that wrote it (its format version is in the message) and take the tables across with "
        "`jetstore export` there and `jetstore import` here, or restore a backup taken with "
        "this engine."
    )
    code = -1209


class AttachedDatabaseMismatch(InconsistentError):
    description = "A database the logs expect is missing or is not the file the logs describe"
    hint = (
        "Put back the database file the logs refer to (same path, same copy). "
        f"{_DIAGNOSE}; otherwise {_RESTORE}."
    )
    code = -1216


class DatabaseSignInUse(InconsistentError):
    description = "Two database files in one log stream carry the same database id"
    hint = (
        "Move the copy that does not belong to the instance out of its directory (the "
        "checkpoint file lists the one that does: `jetstore dump checkpoint DIR/edb.chk`), then "
        "open again; to keep the copy, attach it (`Instance.attach`): it gets an id of its own."
    )
    code = -1222


class TableDuplicate(IntegrityError):
    description = "A table with this name already exists"
    hint = "Choose another name, or open the existing table."
    code = -1303


class ObjectNotFound(UsageError):
    description = "No table or object with this name exists"
    hint = "Check the name; list the tables to see what exists."
    code = -1305


class IndexDuplicate(IntegrityError):
    description = "An index with this name or definition already exists"
    hint = "Choose another name, or use the existing index."
    code = -1403


class IndexNotFound(UsageError):
    description = "No index with this name exists on the table"
    hint = "Check the index name; list the table's indexes to see what exists."
    code = -1404


class NullInvalid(IntegrityError):
    description = "A column that may not be null was left empty"
    hint = "Give the column a value, or make it nullable."
    code = -1504


class ColumnIndexed(UsageError):
    description = "The column is part of the primary key or of an index, so it cannot be deleted"
    hint = (
        "Drop the indexes that use the column first (a primary key column cannot be dropped: "
        "copy the rows into a new table instead)."
    )
    code = -1505


class ColumnNotFound(UsageError):
    description = "No column with this name exists in the table"
    hint = "Check the column name against the table's schema."
    code = -1507


class ColumnDuplicate(IntegrityError):
    description = "A column with this name already exists in the table"
    hint = "Choose another column name."
    code = -1508


class InvalidColumnType(UsageError):
    description = "The column type is not valid here"
    hint = "Use one of the supported column types."
    code = -1511


class KeyTruncated(UsageError):
    description = "The key would be truncated, and this index does not allow that"
    hint = "Shorten the indexed values, or allow key truncation on the index."
    code = -346


class KeyTooBig(UsageError):
    description = "The key is larger than the maximum key size"
    hint = "Shorten the key, or index a shorter column or prefix."
    code = -408


# --- records ----------------------------------------------------------------------------


class RecordNotFound(JetError, KeyError):
    category = "usage"
    description = "No record has the requested key"
    hint = "Check the key; use get() or `in` when a missing key is expected."
    code = -1601

    # KeyError.__str__ would quote the message; keep the engine's format.
    __str__ = JetError.__str__


class NoCurrentRecord(StateError):
    description = "The cursor is not positioned on a record"
    hint = "Seek or move the cursor to a record before reading or changing it."
    code = -1603


class KeyDuplicate(IntegrityError):
    description = "The key already exists in a unique index"
    hint = "Use a different key, or update the existing record instead of inserting."
    code = -1605


# --- files ------------------------------------------------------------------------------


class DiskFull(ResourceError):
    description = "The volume has no space left"
    hint = "Free space on the volume named in the detail, then retry or reopen the instance."
    code = -1808


class FileNotFound(IOFailure):
    description = "A file the engine needs does not exist"
    hint = (
        "Check that the file named in the detail exists and the path is right. "
        f"{_DIAGNOSE}; if the file was lost, {_RESTORE}."
    )
    code = -1811


class FileInvalidType(InconsistentError):
    description = "The file is not of the kind expected (wrong magic or file type)"
    hint = (
        "Check that the path names the right file (a database, log or checkpoint file as "
        f"expected); {_DIAGNOSE_LC}."
    )
    code = -1812


class LogCorrupted(CorruptionError):
    description = "The log files cannot be interpreted"
    hint = (
        "Run `jetstore logs verify DIR` to find the damaged log generation; "
        f"{_RESTORE}, or {_LOSSY}."
    )
    code = -1852


class AccessDenied(UsageError):
    description = "The operation is not permitted on this handle or instance"
    hint = "Open the instance or database read-write to make changes."
    code = -1907


# --- lookup -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What ``describe()`` returns: one error with its number in all three printed forms."""

    code: int
    name: str
    ese_name: str
    description: str
    hint: str
    category: str
    signed: int
    unsigned: int
    hex: str


_LOOKUP_HINT: Final = (
    "Give the number as it was printed (-1811, 4294965485 or 0xfffff8ed) or a name such as "
    "JET_errFileNotFound; errors.ERRORS_BY_CODE lists every known number."
)
_DECIMAL = re.compile(r"[+-]?[0-9]+")
_HEX = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")


def _forms(code: int) -> str:
    unsigned = code % _U32
    return f"{code} (unsigned {unsigned}, hex 0x{unsigned:08x})"


def normalize_code(value: int | str) -> int:
    """Return the signed 32-bit error number for any form a number is printed in.

    Accepts ``-1811``, ``4294965485`` (unsigned 32-bit), ``"0xfffff8ed"`` (either case), the
    decimals as strings, and names (``"JET_errFileNotFound"``, ``"FileNotFound"``, any case).
    Raises ``InvalidParameter`` for unknown names and numbers outside 32 bits.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidParameter(
            f"error code must be an int or a string, got {value!r}", hint=_LOOKUP_HINT
        )
    number: int
    if isinstance(value, str):
        text = value.strip()
        if _DECIMAL.fullmatch(text):
            number = int(text, 10)
        elif _HEX.fullmatch(text):
            number = int(text, 16)
        else:
            cls = _BY_FOLDED_NAME.get(text.casefold())
            if cls is None:
                raise InvalidParameter(
                    f"{value!r} is neither an error number (-1811, 4294965485, 0xfffff8ed) "
                    "nor the name of an error jetstore reports",
                    hint=_LOOKUP_HINT,
                )
            return cls.code
    else:
        number = value
    if _I32_MIN <= number < _I32_LIMIT:
        return number
    if _I32_LIMIT <= number < _U32:
        return number - _U32
    raise InvalidParameter(
        f"{value!r} does not fit in 32 bits, so it is not an error number", hint=_LOOKUP_HINT
    )


def error_class(code: int) -> type[JetError] | None:
    """The class registered for ``code`` (signed or unsigned 32-bit), or None."""
    try:
        return ERRORS_BY_CODE.get(normalize_code(code))
    except InvalidParameter:
        return None


def describe(code: int | str) -> ErrorInfo:
    """Explain an error number or name: what it means, its category and the typical fix."""
    signed = normalize_code(code)
    cls = ERRORS_BY_CODE.get(signed)
    if cls is None:
        message = f"unknown error number {_forms(signed)}: jetstore reports no such error"
        if signed > 0 and -signed in ERRORS_BY_CODE:
            message += f"; did you mean {-signed} ({ERRORS_BY_CODE[-signed].ese_name})?"
        raise InvalidParameter(message, hint=_LOOKUP_HINT)
    unsigned = signed % _U32
    return ErrorInfo(
        code=signed,
        name=cls.name,
        ese_name=cls.ese_name,
        description=cls.description,
        hint=cls.hint,
        category=cls.category,
        signed=signed,
        unsigned=unsigned,
        hex=f"0x{unsigned:08x}",
    )


# --- OSError translation ----------------------------------------------------------------


def _errno_table() -> dict[int, type[JetError]]:
    groups: list[tuple[tuple[str, ...], type[JetError]]] = [
        (("ENOENT",), FileNotFound),
        (("EACCES", "EPERM", "EROFS", "ETXTBSY", "EBUSY"), FileAccessDenied),
        (("ENOSPC", "EDQUOT", "EFBIG"), DiskFull),
        (("EMFILE", "ENFILE"), OutOfFileHandles),
        (("ENOTDIR", "ENAMETOOLONG", "EISDIR", "ELOOP", "EXDEV"), InvalidPath),
        (("EEXIST",), FileAlreadyExists),
        (("ENOMEM",), OutOfMemory),
    ]
    table: dict[int, type[JetError]] = {}
    for names, cls in groups:
        for errno_name in names:
            number = getattr(_errno, errno_name, None)
            if isinstance(number, int):
                table[number] = cls
    return table


_BY_ERRNO: Final = _errno_table()
# For OSErrors built without an errno (e.g. ``FileNotFoundError("x")``).
_BY_OSERROR_TYPE: Final[tuple[tuple[type[OSError], type[JetError]], ...]] = (
    (FileNotFoundError, FileNotFound),
    (PermissionError, FileAccessDenied),
    (NotADirectoryError, InvalidPath),
    (IsADirectoryError, InvalidPath),
    (FileExistsError, FileAlreadyExists),
)


def _path_problem(number: int | None, op: str, path: str) -> tuple[str, str] | None:
    """What is wrong with `path` for a path errno, and what to do: (explanation, hint).

    None for the other errors (their class's hint fits). The explanation is about the path,
    never the disk: a directory where a file belongs is an operator's mistake, not an I/O
    error, and "check the cabling" would send them the wrong way.
    """
    if number == _errno.EISDIR:
        return (
            f"'{path}' is a directory, where the engine keeps a file",
            f"Move the directory '{path}' away (or rename it): the name is one the engine "
            "uses for a file of its own. Then retry.",
        )
    if number == _errno.EEXIST:
        if op == "create directory":
            return (
                f"'{path}' is a file, where the engine needs a directory",
                "Give a path that is a directory or does not exist yet, or move the file away.",
            )
        return (
            f"'{path}' already exists",
            "Move the existing file away or give another path, then retry.",
        )
    if number == _errno.ENOTDIR:
        return (
            f"a parent of '{path}' is a file, not a directory",
            "Check the path: every parent must be a directory (or not exist yet, where the "
            "engine creates directories).",
        )
    if number == _errno.ENAMETOOLONG:
        return (
            f"the path '{path}' (or one of its names) is too long for the file system",
            "Use a shorter path.",
        )
    if number == _errno.EXDEV:
        return (
            f"'{path}' is on another file system than where it was to be moved, and a "
            "rename cannot move a file between file systems",
            "Copy the file onto the destination's file system (for an attach: into the "
            "instance directory), then retry with the copy.",
        )
    if number == _errno.ELOOP:
        return (
            f"'{path}' goes through a loop of symbolic links (or too many of them)",
            "Fix the symbolic links on the path, or give a path without them.",
        )
    return None


def _dangling_link(path: str) -> tuple[str, str] | None:
    """For "no such file" on `path`: when it is a symbolic link whose target is gone, say
    so; a bare "No such file" contradicts `ls`, which shows the name."""
    try:
        target = os.readlink(path)
    except (OSError, ValueError):
        return None  # no link (or none any more): the OS message says it
    return (
        f"'{path}' is a symbolic link to '{target}', which does not exist",
        "Put the file back where the link points (or replace the link with the file itself), "
        "then retry.",
    )


def from_os_error(exc: OSError, *, op: str, path: str) -> JetError:
    """Translate an ``OSError`` from file operation ``op`` on ``path`` into an engine error.

    The result names the operation, the path and the OS message, carries ``errno`` and has
    ``__cause__`` set to ``exc``. Callers raise it: ``raise from_os_error(e, ...) from e``.
    Unrecognised errors (EIO and the rest) become ``DiskIO``. Errors about the path itself
    (EISDIR, ENOTDIR, ENAMETOOLONG, ELOOP, EXDEV, and EEXIST where a directory was to be made)
    become ``InvalidPath``, and EEXIST of a file ``FileAlreadyExists``; their detail says what
    is wrong with the path and their hint what to do about it. So does ``FileNotFound`` for a
    symbolic link whose target is gone (`_dangling_link`).
    """
    cls: type[JetError] | None = None
    if exc.errno is not None:
        cls = _BY_ERRNO.get(exc.errno)
    else:
        for os_type, jet_type in _BY_OSERROR_TYPE:
            if isinstance(exc, os_type):
                cls = jet_type
                break
    if cls is None:
        cls = DiskIO
    if exc.errno is not None and exc.strerror:
        os_message = f"[Errno {exc.errno}] {exc.strerror}"
    else:
        os_message = str(exc) or type(exc).__name__
    number = exc.errno
    if number is None and isinstance(exc, IsADirectoryError):
        number = _errno.EISDIR
    elif number is None and isinstance(exc, FileExistsError):
        number = _errno.EEXIST
    if cls is FileAlreadyExists and op == "create directory":
        cls = InvalidPath  # a file stands where a directory belongs
    problem = _path_problem(number, op, path) if cls in (InvalidPath, FileAlreadyExists) else None
    if cls is FileNotFound and number == _errno.ENOENT:
        problem = _dangling_link(path)
    if problem is None:
        err = cls(f"{op} failed on {path!r}: {os_message}", path=path)
    else:
        explanation, hint = problem
        err = cls(f"{explanation} ({op} failed: {os_message})", hint=hint, path=path)
    err.errno = exc.errno
    err.__cause__ = exc
    return err
