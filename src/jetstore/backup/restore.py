"""Restore: a full backup set plus a chain of incrementals (or one differential), and optionally
the surviving logs of the damaged instance, into a fresh instance directory, rolled forward.

`restore(backup_paths, target_dir, logs_from=None, until=None, dry_run=False)`:

1. Plan and check, before anything is written: every set of this engine's format version (its
   manifest's `format_version`, `InvalidBackup` otherwise); exactly one full (or copy) set; the
   others all incrementals or one differential; every set of the same log stream (signature) as
   the full one (`GivenLogFileHasBadSignature`, -555); their generation ranges contiguous, the
   full one's first (`GivenLogFileIsNotContiguous`, -556, naming the missing generations); every
   file the manifests list present, of the stored size they list (`ReadVerifyFailure`; the
   contents are checked while copied); the surviving logs, when given, of the same stream and
   continuing the last set (an offline set: from its images' consistent point; a directory
   holding no such file is refused, not ignored, like a gap; a misnamed log file there is
   named by the refusal, with the name to give it, and one that may continue the logs after
   their end refuses too) without a gap (or
   an unreadable file) before their end or the stop point (a generation before it; a time when a
   commit later than it lies before it, `_check_stop_before_gap`); each log file that comes
   from another place than the one before it (the next set, the surviving logs) continuing it
   as replay checks it (`InvalidLogSequence`, -515: a copy of the instance that ran on by
   itself has the same stream and generation numbers); a stop point (`until`: a
   generation, or a time) the images can reach (`EndingRestoreLogTooLow`, -553): a time before
   the full set's `started_us` (when its images were pinned) only when no commit the images hold
   is later (`_check_images_at`; an offline set's surviving logs tell it, the set has
   none); the target absent or an empty directory, not the directory of an open instance,
   no mount point and no symbolic link (step 4 renames over it), not inside a set or the
   surviving log directory (`_check_target_outside`). The time checks
   read the commit records of the logs to copy (`jetstore.backup.stoptime`), nothing else.
2. Copy the images and logs (each file's size and CRC32C checked against its manifest; with a
   generation stop, no log after it) into a staging directory next to the target
   (`<target>.restoring`), marked (`RESTORING_MARKER`) until step 3 is done: what a killed
   restore leaves there is refused as an instance (`refuse_backup_set`).
3. Recover there (`jetstore.instance.recovery` with a `RestoreRequest`): replay from every
   image's checkpoint to the stop point or the end of the logs; the databases are then
   written clean and bound to no log stream, their backup history cleared, the copied logs
   removed. The instance is opened and closed once, so it starts its own log stream.
4. Rename the staging directory to the target and sync the parent directory.

Invariants:
- A refused restore writes nothing; a failed one removes its staging directory (or, failing
  after the rename, while the parent's sync has not made it durable, the target it became:
  an empty target directory is made again); the target appears (by one rename) only when it
  holds a clean instance that opens without recovery.
  A failure of replay about a copied file names the file it was copied from, with a
  restore's way out (`_named_at_source`), never the copy the failure deletes; a full disk
  or a disk error under the staging directory is the target's, never the set's
  (`_target_failure`).
- The surviving log directory, when it is an instance directory, is locked from the plan to
  the end of the copy (`_lock_surviving_logs`): no instance opened there changes its logs
  between their checks and their copy.
- A restored instance never shares a log stream with the original: logs and backups of the
  two can never be mixed up (generation numbers alone would allow it).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from jetstore.backup.backupset import (
    RESTORING_MARKER,
    Manifest,
    ManifestFile,
    make_staging_directory,
    read_backup_file,
    read_manifest,
    refuse_symbolic_link,
    stored_size_mismatch,
)
from jetstore.backup.stoptime import (
    LogSource,
    first_commit_after,
    images_commit_bound,
    link_problem,
)
from jetstore.errors import (
    BadLogVersion,
    DiskFull,
    EndingRestoreLogTooLow,
    FileAccessDenied,
    FileNotFound,
    GivenLogFileHasBadSignature,
    GivenLogFileIsNotContiguous,
    InvalidBackup,
    InvalidLogSequence,
    InvalidParameter,
    InvalidPath,
    JetError,
    LogDiskFull,
    MissingRestoreLogFiles,
)
from jetstore.format.common import FORMAT_VERSION, format_time_us
from jetstore.format.filenames import (
    CURRENT_LOG,
    LOCK_FILE,
    generation_log_name,
)
from jetstore.io.files import FileSystem, absolute_path
from jetstore.io.handles import HandleRegistry
from jetstore.io.locking import (
    HOLDER_RESTORE,
    DirectoryLock,
    acquire_directory_lock,
    describe_lock_holder,
    is_locked,
)
from jetstore.log.reader import LogInventory, MisnamedLog, set_aside_logs_of, take_inventory

#: Staging directory suffix: the restore is built there, then renamed into place.
STAGING_SUFFIX = ".restoring"
#: Owner of the `--logs-from` directory lock: apart from the copy's "restore", whose handles
#: are closed when the copy ends, before the lock is released.
_LOGS_LOCK_OWNER = "restore-logs-from"
_COPY_CHUNK = 1024 * 1024

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class RestoreStep:
    """One file the restore writes into the instance directory."""

    name: str
    kind: str  # "database" or "log"
    size: int
    source: str  # the backup set (or the surviving log directory) it comes from
    generation: int | None = None
    entry: ManifestFile | None = None  # None: a surviving log file, copied as it is


@dataclass
class RestorePlan:
    target: str
    sets: list[Manifest]
    steps: list[RestoreStep]
    generation_low: int
    generation_high: int  # the last generation the restore has (sets and surviving logs)
    stop_generation: int | None
    stop_time_us: int | None
    databases: list[str]
    surviving_logs: list[int] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(step.size for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "sets": [
                {
                    "path": m.path,
                    "kind": m.kind,
                    "generation_low": m.generation_low,
                    "generation_high": m.generation_high,
                    "completed": format_time_us(m.completed_us),
                }
                for m in self.sets
            ],
            "databases": self.databases,
            "generation_low": self.generation_low,
            "generation_high": self.generation_high,
            "surviving_logs": self.surviving_logs,
            "stop_generation": self.stop_generation,
            "stop_time": format_time_us(self.stop_time_us) if self.stop_time_us else None,
            "files": [
                {"name": s.name, "kind": s.kind, "size": s.size, "from": s.source}
                for s in self.steps
            ],
            "bytes": self.total_bytes,
        }

    def describe(self) -> list[str]:
        """The plan in words, one line each (for `--dry-run`)."""
        lines = [f"restore into {self.target}"]
        for m in self.sets:
            # An offline set holds no log (its images are clean): "log generations 0-0" read
            # as a set whose logs were lost.
            logs = (
                "no log files (offline: clean images)"
                if m.generation_high == 0
                else f"log generations {m.generation_low}-{m.generation_high}"
            )
            lines.append(
                f"  {m.kind} backup {m.path}: {logs}, completed {format_time_us(m.completed_us)}"
            )
        if self.surviving_logs:
            lines.append(
                f"  surviving logs: generations {self.surviving_logs[0]}-{self.surviving_logs[-1]}"
            )
        stop = "the end of the logs"
        if self.stop_generation is not None:
            stop = f"the end of log generation {self.stop_generation}"
        elif self.stop_time_us is not None:
            stop = f"the last commit at or before {format_time_us(self.stop_time_us)}"
        databases = ", ".join(self.databases) or "(none)"
        if self.generation_high == 0:
            lines.append(f"  databases {databases}; no log to roll forward: the images are clean")
        else:
            lines.append(
                f"  databases {databases}; roll forward through generations "
                f"{self.generation_low}-{self.generation_high}, stopping at {stop}"
            )
        lines.append(f"  {len(self.steps)} file(s), {self.total_bytes} bytes")
        return lines


@dataclass
class RestoreResult:
    plan: RestorePlan
    executed: bool
    replayed: int = 0
    restored_to: str | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    #: (database, log position): each restored database the later logs detached; it is
    #: restored as it was at its detach, no later record of its id applied to it.
    detached: list[tuple[str, str]] = field(default_factory=list)
    #: (database, log position): each database the later logs attached that the backup
    #: does not hold; its records were skipped.
    not_restored: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.as_dict(),
            "executed": self.executed,
            "replayed": self.replayed,
            "restored_to": self.restored_to,
            "stopped_early": self.stopped_early,
            "detached": [{"database": name, "position": at} for name, at in self.detached],
            "not_restored": [
                {"database": name, "attached_at": at} for name, at in self.not_restored
            ],
            "seconds": round(self.seconds, 3),
        }


def restore(
    backup_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    target_dir: str | os.PathLike[str],
    *,
    logs_from: str | os.PathLike[str] | None = None,
    until: int | datetime | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore backup sets into `target_dir` (see the module docstring).

    `until`: an int stops after that log generation; a datetime (naive = UTC) stops after the
    last commit at or before it. `dry_run` checks everything and returns the plan only.
    """
    started = time.monotonic()
    fs = FileSystem(HandleRegistry("restore"))
    lock: DirectoryLock | None = None

    def release_logs() -> None:
        # Once the copy ends (D11): replay, the longest part, needs none of those files.
        nonlocal lock
        held, lock = lock, None
        try:
            if held is not None:
                held.release()
        finally:
            # Also a lock taken as a Ctrl-C came (`lock` never assigned): held by its
            # owner's handles until the process ended, it refused every opener there.
            fs.registry.close_owner(_LOGS_LOCK_OWNER)

    try:
        # A dry run only probes the lock (in the plan): taking it writes this process's pid
        # into the instance's lock file, and a dry run writes nothing.
        if logs_from is not None and not dry_run:
            lock = _lock_surviving_logs(fs, logs_from, target_dir)
        plan = plan_restore(
            backup_paths,
            target_dir,
            logs_from=logs_from,
            until=until,
            fs=fs,
            logs_locked=lock is not None,
        )
        if dry_run:
            return RestoreResult(plan, executed=False, seconds=time.monotonic() - started)
        result = _execute(plan, fs, progress, copied=release_logs)
    finally:
        release_logs()
    result.seconds = time.monotonic() - started
    return result


def _lock_surviving_logs(
    fs: FileSystem, logs_from: str | os.PathLike[str], target_dir: str | os.PathLike[str]
) -> DirectoryLock | None:
    """The directory lock of `logs_from` when it is an instance directory (it holds
    `jetstore.lock`), held from the plan to the end of the copy: an instance opened there
    meanwhile (a restart of the damaged one) would recover, roll and delete the very logs
    the plan checked and the copy reads. None when it is no instance directory (a copy of
    the logs; the plan says what is wrong with a path that is no directory), or when this
    process may not write its lock file (a read-only copy: then the lock is only probed, as
    no instance can write there either)."""
    directory = absolute_path(logs_from, what="--logs-from")
    if directory == absolute_path(target_dir, what="restore target"):
        return None  # refused by the plan
    if not fs.is_directory(directory) or not fs.exists(os.path.join(directory, LOCK_FILE)):
        return None
    try:
        return acquire_directory_lock(fs, directory, owner=_LOGS_LOCK_OWNER, holder=HOLDER_RESTORE)
    except FileAccessDenied as exc:
        if exc.errno is None:  # held by an instance, not refused by the OS
            raise _logs_in_use(fs, directory) from None
    if is_locked(fs, directory):
        raise _logs_in_use(fs, directory)
    return None


def _logs_in_use(fs: FileSystem, directory: str) -> FileAccessDenied:
    return FileAccessDenied(
        f"'{directory}' is held by {describe_lock_holder(fs, directory)}: an instance "
        "there writes (and deletes) its logs, and another opener there could start one",
        hint="close (or stop) that instance, or wait for that restore or tool to end, then "
        "restore with its logs",
        path=directory,
    )


def _paths(value: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    if isinstance(value, str | os.PathLike):
        return [absolute_path(value, what="backup set")]
    if isinstance(value, bytes | bytearray) or not isinstance(value, Iterable):
        # One path of the wrong type: a bytes path was taken for a list of numbers, and None
        # failed as a bare TypeError.
        return [absolute_path(value, what="backup set")]
    return [absolute_path(p, what="backup set") for p in value]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _stop_time_us(until: datetime) -> int:
    # Exact to the microsecond (a float timestamp can land one below), so that a stop time
    # printed by `_iso_us` and given back means that very microsecond.
    moment = until if until.tzinfo is not None else until.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _iso_us(time_us: int) -> str:
    """`--until-time` text for a stored time, to the microsecond (`format_time_us` shows
    seconds only, which can name an earlier time than meant)."""
    moment = _EPOCH + timedelta(microseconds=time_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _log_sources(fs: FileSystem, steps: Sequence[RestoreStep]) -> list[LogSource]:
    """The log files of `steps` as `jetstore.backup.stoptime` reads them, by generation."""
    sources: list[LogSource] = []
    for step in sorted(
        (s for s in steps if s.kind == "log" and s.generation is not None),
        key=lambda s: s.generation or 0,
    ):
        assert step.generation is not None
        name = step.source if step.entry is None else f"{step.source}: {step.name}"
        sources.append(LogSource(step.generation, _reader(fs, step), name))
    return sources


def _reader(fs: FileSystem, step: RestoreStep) -> Callable[[], bytes]:
    entry = step.entry
    if entry is None:
        return lambda: fs.read_file(step.source, owner="restore")
    # A set's file, decompressed and checked against its manifest as it is read.
    return lambda: b"".join(read_backup_file(step.source, entry, fs=fs, owner="restore"))


def plan_restore(
    backup_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    target_dir: str | os.PathLike[str],
    *,
    logs_from: str | os.PathLike[str] | None = None,
    until: int | datetime | None = None,
    fs: FileSystem | None = None,
    logs_locked: bool = False,
) -> RestorePlan:
    """Every check of a restore, nothing written: the plan, or the error that refuses it.

    `logs_locked`: the caller holds the directory lock of `logs_from` (`restore` does);
    otherwise it is probed, and the directory of an open instance refused."""
    fs = fs or FileSystem(HandleRegistry("restore"))
    paths = _paths(backup_paths)
    if not paths:
        raise InvalidParameter("no backup set given", hint="name a full backup set to restore")
    target = absolute_path(target_dir, what="restore target")
    _check_target_outside(
        target,
        paths,
        None if logs_from is None else absolute_path(logs_from, what="--logs-from"),
    )
    _check_target(fs, target)
    manifests = [read_manifest(path) for path in paths]
    for m in manifests:
        if m.format_version != FORMAT_VERSION:
            # Its images would only be refused once copied, at the open that replays them.
            raise InvalidBackup(
                f"backup set '{m.path}' holds files of format version {m.format_version} "
                f"(written by {m.engine_version}); this engine reads version {FORMAT_VERSION}",
                hint=f"restore it with the engine that wrote it ({m.engine_version})",
                path=m.path,
            )
    base_sets = [m for m in manifests if m.kind in ("full", "copy")]
    if len(base_sets) != 1:
        raise InvalidBackup(
            f"a restore takes exactly one full (or copy) backup set, {len(base_sets)} given "
            f"({', '.join(m.path for m in base_sets) or 'none'})",
            hint="name one full backup, then the incrementals or the differential after it",
        )
    base = base_sets[0]
    later = sorted((m for m in manifests if m is not base), key=lambda m: m.generation_low)
    kinds = {m.kind for m in later}
    if "differential" in kinds and len(later) > 1:
        raise InvalidBackup(
            "a restore takes one differential backup, or a chain of incrementals, not both "
            f"({', '.join(f'{m.kind} {m.path}' for m in later)})",
            hint="use the newest differential alone, or the incrementals alone",
        )
    for m in later:
        if m.log_signature != base.log_signature:
            raise GivenLogFileHasBadSignature(
                f"backup set '{m.path}' belongs to log stream {m.log_signature}, the full "
                f"backup '{base.path}' to {base.log_signature}",
                hint="remove the backup of another instance (or of a restored copy) from the list",
                path=m.path,
            )
    expected = base.generation_high + 1
    seen: set[str] = {base.path}
    for m in later:
        if m.generation_low != expected:
            if m.generation_low > expected:
                missing = f"generations {expected}-{m.generation_low - 1} are in no set given"
            else:
                missing = (
                    f"it starts at generation {m.generation_low}, inside what the sets before "
                    f"it cover (up to {expected - 1})"
                )
            # Nothing may be missing: one set too many, or a copy backup at the head of a
            # chain it does not start (the advice for a gap sent the operator looking for
            # backups that do not exist).
            chain = (
                f": name the {base.kind} backup, then each incremental taken after it once (in "
                "any order), or the one differential"
            )
            if m.path in seen:
                missing += ": it is named twice"
                hint = f"name it once{chain}"
            elif base.kind == "copy":
                missing += (
                    ": incremental and differential backups follow the last full (or "
                    f"incremental) backup, never a copy backup such as '{base.path}'"
                )
                hint = (
                    f"restore the full backup it follows, with {m.path} (and the incrementals "
                    f"between them); or the copy backup '{base.path}' alone"
                )
            elif m.generation_low < expected:
                missing += (
                    f": it was taken before the {base.kind} backup '{base.path}', or belongs "
                    "to another chain of backups"
                )
                hint = f"leave {m.path} out{chain}"
            else:
                hint = "add the missing incremental backups, or restore from a later full backup"
            raise GivenLogFileIsNotContiguous(
                f"{m.kind} backup '{m.path}' does not continue the chain: {missing}",
                hint=hint,
                path=m.path,
            )
        seen.add(m.path)
        expected = m.generation_high + 1
    steps: list[RestoreStep] = []
    # Replay never reads past a generation stop: the sets' logs after it are neither copied
    # nor checked, so damage there (a missing file too) does not keep the generations before
    # it from being restored.
    last_needed = until if isinstance(until, int) and not isinstance(until, bool) else None
    for m in [base, *later]:
        for entry in m.files:
            if entry.kind == "database" and m is not base:
                continue
            if (
                entry.kind == "log"
                and last_needed is not None
                and (entry.generation or 0) > last_needed
            ):
                continue
            stored = os.path.join(m.path, entry.stored_name)
            if not fs.exists(stored):
                error = MissingRestoreLogFiles if entry.kind == "log" else FileNotFound
                hint = "copy the whole backup set again, then retry"
                before = (entry.generation or 0) - 1
                if entry.kind == "log" and before >= _image_generation(base):
                    hint += f"; or {_stop_after(base, before)}"
                raise error(
                    f"backup set '{m.path}' lists {entry.name}, but {entry.stored_name} is not "
                    "there",
                    hint=hint,
                    path=stored,
                )
            steps.append(
                RestoreStep(entry.name, entry.kind, entry.size, m.path, entry.generation, entry)
            )
    for step in steps:
        # A set cut short (a partial copy) is told by its sizes alone: refused here, not
        # after everything before it was copied (contents are checked while copied).
        assert step.entry is not None
        stored = os.path.join(step.source, step.entry.stored_name)
        size = fs.size(stored)
        if size != step.entry.stored_size:
            raise stored_size_mismatch(stored, size, step.entry)
    for m in [base, *later]:
        if m.generation_low == 0 and m.generation_high == 0:
            continue  # an offline backup of a clean instance: images only
        generations = sorted(e.generation for e in m.files if e.generation is not None)
        # Never `list(range(low, high + 1))`: the range is the manifest's word, and a damaged
        # one may claim 2**40 generations (MemoryError, or the process killed for its memory).
        # Compared by count first, and what is missing said as ranges.
        low, high = m.generation_low, m.generation_high
        if len(generations) != high - low + 1 or generations != list(range(low, high + 1)):
            missing_generations = _missing_ranges(generations, low, high)
            raise MissingRestoreLogFiles(
                f"backup set '{m.path}' covers generations {m.generation_low}-"
                f"{m.generation_high} but lists no file for "
                f"{', '.join(missing_generations) or 'some of them'}",
                hint="the manifest is inconsistent: use another backup",
                path=m.path,
            )
    surviving: list[int] = []
    gap: JetError | None = None  # a gap in the surviving logs a time stop may end before
    if logs_from is not None:
        if base.generation_low == 0 and base.generation_high == 0 and not later and base.images:
            # An offline set (no log): its clean images need the surviving logs from the
            # generation of their consistent point on, not from generation 1, which the
            # instance's backups (or circular logging) may have deleted long ago: the
            # restore of such a set with the logs after it was refused as a gap.
            expected = max(1, min(image.checkpoint.generation for image in base.images))
        surviving_steps, gap = _surviving_logs(
            fs,
            absolute_path(logs_from, what="--logs-from"),
            base,
            expected,
            target,
            stop=until if isinstance(until, int) and not isinstance(until, bool) else None,
            defer_gap=isinstance(until, datetime),
            logs_locked=logs_locked,
        )
        surviving = [s.generation for s in surviving_steps if s.generation is not None]
        steps.extend(surviving_steps)
        if surviving:
            expected = surviving[-1] + 1
    _check_links(fs, steps)
    high = expected - 1
    stop_generation: int | None = None
    stop_time: int | None = None
    image_generation = _image_generation(base)
    if isinstance(until, datetime):
        stop_time = _stop_time_us(until)
        if stop_time < base.started_us:
            _check_images_at(fs, base, steps, stop_time)
        if gap is not None:
            _check_stop_before_gap(fs, base, steps, stop_time, gap, high)
    elif isinstance(until, int) and not isinstance(until, bool):
        stop_generation = until
        if until < image_generation:
            raise EndingRestoreLogTooLow(
                f"the restore should stop after generation {until}, but the images of "
                f"'{base.path}' are at generation {image_generation}",
                hint=f"stop at generation {image_generation} or later",
                path=base.path,
            )
        if until > high:
            raise MissingRestoreLogFiles(
                f"the restore should stop after generation {until}, but the logs given end "
                f"at generation {high}",
                hint="add the later incremental backups or the surviving logs (--logs-from)",
            )
    elif until is not None:
        raise InvalidParameter(
            f"until must be a generation number or a datetime, not {until!r}",
        )
    return RestorePlan(
        target=target,
        sets=[base, *later],
        steps=steps,
        generation_low=base.generation_low,
        generation_high=high,
        stop_generation=stop_generation,
        stop_time_us=stop_time,
        databases=[image.name for image in base.images],
        surviving_logs=surviving,
    )


def _missing_ranges(present: list[int], low: int, high: int) -> list[str]:
    """The generations of `low`-`high` not in the sorted `present`, as "a" or "a-b" texts
    (computed from the gaps, never by listing the range: see `plan_restore`)."""
    ranges: list[str] = []
    following = low
    for generation in present:
        if generation < following or generation > high:
            continue
        if generation > following:
            last = generation - 1
            ranges.append(str(following) if following == last else f"{following}-{last}")
        following = generation + 1
    if following <= high:
        ranges.append(str(following) if following == high else f"{following}-{high}")
    return ranges


def _check_target_outside(target: str, sets: Sequence[str], logs_from: str | None) -> None:
    """InvalidPath for a target inside a backup set or the `--logs-from` directory (the
    command line refused it, the API built the restore there): a set would hold the restored
    instance, which deleting the old set deletes, and a file its manifest does not list; the
    damaged instance's directory would nest an instance in its own. Links resolved: a
    directory reached through one is that directory."""
    real = os.path.realpath(target)
    places = [(path, "backup set") for path in sets]
    if logs_from is not None:
        places.append((logs_from, "--logs-from directory"))
    for place, what in places:
        base = os.path.realpath(place).rstrip(os.sep)
        if real.startswith(base + os.sep):
            raise InvalidPath(
                f"restore target '{target}' is inside the {what} '{place}': the restored "
                "instance would live in it (and go with it when it is deleted)",
                hint="restore into a directory of its own, outside every backup set and the "
                "--logs-from directory",
                path=target,
            )


def _check_target(fs: FileSystem, target: str) -> None:
    # Step 4 renames the staging directory over the link, which is no directory to remove
    # (ENOTDIR, reported as "a parent is a file" once everything was copied and replayed);
    # a link whose directory does not exist went the same way.
    refuse_symbolic_link(target, what="restore target", option="--to")
    if fs.exists(target):
        if not fs.is_directory(target):
            raise InvalidPath(
                f"restore target '{target}' exists and is not a directory",
                hint="name a new directory",
                path=target,
            )
        if is_locked(fs, target):
            # Never "close it first": closed, it is refused as not empty all the same.
            raise FileAccessDenied(
                f"restore target '{target}' is held by {describe_lock_holder(fs, target)}: "
                "a restore never replaces an instance's files",
                hint="restore into a new or empty directory; to have the restore at this "
                "path, close that instance (or let that restore or tool end) and move its "
                "directory away first",
                path=target,
            )
        if fs.listdir(target):
            raise InvalidPath(
                f"restore target '{target}' is not empty",
                hint="restore into a new or empty directory (move the old files away first)",
                path=target,
            )
        if os.path.ismount(target):
            raise InvalidPath(
                f"restore target '{target}' is a mount point: the restore is built next to "
                f"it ('{target + STAGING_SUFFIX}', on the file system above) and renamed into "
                "its place, which a mount point cannot be",
                hint=f"restore into a directory inside it: --to {os.path.join(target, 'NAME')}",
                path=target,
            )
    parent = os.path.dirname(target)
    fs.require_directory(parent, what="the parent of the restore target", hint="create it first")
    staging = target + STAGING_SUFFIX
    if fs.exists(staging):
        raise InvalidPath(
            f"'{staging}' exists: an earlier restore into '{target}' was interrupted (or is "
            "still running)",
            hint=f"when no restore into '{target}' is running, delete '{staging}', then retry",
            path=staging,
        )


def _surviving_logs(
    fs: FileSystem,
    directory: str,
    base: Manifest,
    expected: int,
    target: str,
    *,
    stop: int | None = None,
    defer_gap: bool = False,
    logs_locked: bool = False,
) -> tuple[list[RestoreStep], JetError | None]:
    """The surviving log files that continue the sets from generation `expected`, up to
    generation `stop` when given. A generation missing or unreadable before the end of the
    surviving logs (or before `stop`) refuses the restore, naming it: replay would end there,
    and the commits after it would be lost without a word. With `defer_gap` (a time stop,
    which may end before it: `_check_stop_before_gap`) the files before it and the refusal
    are returned instead; otherwise the second value is None."""
    directory = os.path.abspath(directory)
    if directory == target:
        raise InvalidParameter("the surviving logs cannot come from the restore target")
    fs.require_directory(
        directory, what="surviving log directory", hint="name the damaged instance's directory"
    )
    if not logs_locked and is_locked(fs, directory):
        raise _logs_in_use(fs, directory)
    inventory = take_inventory(fs, directory, owner="restore")
    for generation in sorted(inventory.files):
        # Every log file there must be of the backup's stream, also those the sets already
        # hold: another instance's directory is refused, not silently left unused.
        header = inventory.files[generation].header
        if header is not None and header.log_signature != base.log_signature:
            aside = set_aside_logs_of(fs, directory, {base.log_signature}, owner="restore")
            raise GivenLogFileHasBadSignature(
                f"surviving log file '{inventory.files[generation].path}' belongs to log "
                f"stream {header.log_signature}, the backup to {base.log_signature}"
                + (
                    f"; the logs of the backup's stream were set aside in '{aside}' by a "
                    "repair or a recovery that accepted data loss, and the instance began "
                    "a new stream"
                    if aside
                    else ""
                ),
                hint=f"name that directory: --logs-from {aside}"
                if aside
                else "name the directory of the instance the backup was taken of",
                path=inventory.files[generation].path,
            )
    # Unreadable files (`take_inventory` lists them apart): an archived one by the generation
    # its name says; an unreadable current log (edb.log) stands for the generation after
    # every other file there and after the sets, as the stream writes it last. Taking the
    # newest readable file alone mapped it onto a generation the sets (or an unreadable
    # archived file) already stood for, and the restore went on without it.
    unreadable = {entry.generation: entry for entry in inventory.unreadable if entry.generation}
    newest = max([*inventory.files, *unreadable, expected - 1])
    for bad_file in inventory.unreadable:
        if bad_file.is_current:
            unreadable[newest + 1] = bad_file
    first = expected
    steps: list[RestoreStep] = []
    while stop is None or expected <= stop:
        entry = inventory.files.get(expected)
        if entry is None:
            # Unreadable files count: the logs do not end before them.
            later = [g for g in [*inventory.files, *unreadable] if g > expected]
            bad = unreadable.get(expected)
            file_name = generation_log_name(expected) if bad is None else os.path.basename(bad.path)
            stop_hint = (
                f"{_stop_after(base, expected - 1)}, or put a good copy of {file_name} back "
                f"into '{directory}'"
            )
            refusal: JetError
            if bad is not None:
                why = f"{bad.error.name}: {bad.error.detail}" if bad.error else "unreadable"
                if isinstance(bad.error, BadLogVersion):
                    # Not damage: no good copy exists to put back, and nothing need be lost.
                    stop_hint = (
                        f"{file_name} is not damaged but of another format version: restore "
                        f"with an engine that reads it and the sets' version {FORMAT_VERSION}; "
                        f"or {_stop_after(base, expected - 1)}"
                    )
                refusal = MissingRestoreLogFiles(
                    f"surviving log file '{bad.path}' (generation {expected}, next after "
                    f"generation {expected - 1}) cannot be read ({why})",
                    hint=stop_hint,
                    path=bad.path,
                )
            elif not later and steps:
                break  # the end of the surviving logs
            elif not later:
                # Not one file continues the sets: a wrong directory, or one whose logs were
                # moved. Ignored, the restore ended at the sets and lost what was asked for.
                aside = set_aside_logs_of(fs, directory, {base.log_signature}, owner="restore")
                refusal = MissingRestoreLogFiles(
                    f"no log file in '{directory}' continues the backup sets (generation "
                    f"{expected} on: {CURRENT_LOG} or {generation_log_name(expected)}); "
                    f"{inventory.describe_present()}"
                    + (
                        f"; the logs of the backup's stream were set aside in '{aside}' by a "
                        "repair or a recovery that accepted data loss"
                        if aside
                        else ""
                    ),
                    hint=f"name that directory: --logs-from {aside}"
                    if aside
                    else "name the directory holding the damaged instance's logs (its "
                    f"{CURRENT_LOG}), or restore without --logs-from (the sets alone, up to "
                    f"generation {expected - 1})",
                    path=os.path.join(directory, CURRENT_LOG),
                )
            elif not steps:
                # A gap like any other (a time stop may end before it, in the sets' logs).
                resumes = min(later)
                missing = (
                    f"generation {expected} is"
                    if resumes == expected + 1
                    else f"generations {expected}-{resumes - 1} are"
                )
                refusal = GivenLogFileIsNotContiguous(
                    f"the surviving logs in '{directory}' start at generation {resumes}, but "
                    f"the backup sets end at generation {expected - 1}: {missing} missing",
                    hint="add the incremental backups that hold them, or "
                    + _stop_after(base, expected - 1),
                    path=os.path.join(directory, generation_log_name(expected)),
                )
            else:
                refusal = GivenLogFileIsNotContiguous(
                    f"generation {expected} ({generation_log_name(expected)}) is missing from "
                    f"the surviving logs in '{directory}': they continue the backup sets with "
                    f"generations {first}-{expected - 1}, then go on at generation "
                    f"{min(later)}",
                    hint=stop_hint,
                    path=os.path.join(directory, generation_log_name(expected)),
                )
            refusal = _naming_misnamed(
                refusal,
                [
                    m
                    for m in _misnamed_logs(inventory, base)
                    if m.generation is None or m.generation not in inventory.files
                ],
            )
            if defer_gap:
                return steps, refusal
            raise refusal
        name = CURRENT_LOG if entry.is_current else generation_log_name(expected)
        steps.append(RestoreStep(name, "log", entry.size, entry.path, expected, None))
        expected += 1
    if stop is None:
        # The end of the well-named logs: a misnamed file that may continue them (the
        # current log as EDB.LOG) would otherwise end the restore early without a word.
        later_misnamed = [
            m
            for m in _misnamed_logs(inventory, base)
            if m.generation is None or m.generation >= expected
        ]
        if later_misnamed:
            refusal = _naming_misnamed(
                MissingRestoreLogFiles(
                    f"the surviving logs in '{directory}' end at generation {expected - 1}, "
                    "but a file there that may continue them is misnamed",
                    hint=_stop_after(base, expected - 1),
                    path=later_misnamed[0].path,
                ),
                later_misnamed,
            )
            if defer_gap:
                return steps, refusal
            raise refusal
    return steps, None


def _misnamed_logs(inventory: LogInventory, base: Manifest) -> list[MisnamedLog]:
    """The misnamed log files of the surviving log directory (`take_inventory` lists them,
    each with the name to give it). Files of another stream are left out: no rename makes
    them continue the backup."""
    return [
        m
        for m in inventory.misnamed
        if m.header is None or m.header.log_signature == base.log_signature
    ]


def _naming_misnamed(refusal: JetError, misnamed: Sequence[MisnamedLog]) -> JetError:
    """`refusal` (of logs missing from a directory) naming the misnamed files seen there,
    which the engine never reads: the missing generation is often one of them."""
    if not misnamed:
        return refusal
    names = ", ".join(
        os.path.basename(m.path)
        + (f" (generation {m.generation})" if m.generation is not None else "")
        for m in misnamed
    )
    renames = ", ".join(f"rename {os.path.basename(m.path)} to {m.right_name}" for m in misnamed)
    return type(refusal)(
        f"{refusal.detail}; misnamed, and so not read as log files: {names} (a log file is "
        f"named {CURRENT_LOG} or edb + 8 upper-case hex digits + .log)",
        hint=f"{renames}, then retry; or {refusal.hint}",
        path=refusal.path,
    )


def _check_links(fs: FileSystem, steps: Sequence[RestoreStep]) -> None:
    """Each log file that comes from another place than the one before it (the next set, or
    the surviving logs) continues it (`link_problem`). Signatures and generation numbers do
    not tell a copy of the instance that ran on by itself from the original: replay found out
    only once everything was copied, and named a file of the staging directory it then
    deleted, with the advice to restore it from backup."""
    sources = _log_sources(fs, steps)
    origins = {
        step.generation: step.source if step.entry is not None else "surviving"
        for step in steps
        if step.kind == "log"
    }
    for previous, following in itertools.pairwise(sources):
        if origins[previous.generation] == origins[following.generation]:
            continue
        problem = link_problem(previous, following)
        if problem is None:
            continue
        step = next(s for s in steps if s.kind == "log" and s.generation == following.generation)
        if step.entry is None:
            hint = (
                f"the logs in '{os.path.dirname(step.source)}' are of another history of the "
                "instance than the backup (a copy of its directory that ran on by itself): "
                "name the directory whose logs continue the backup, or restore without "
                "--logs-from (up to the end of the backup sets)"
            )
            path = step.source
        else:
            hint = (
                f"backup set '{step.source}' was taken of another history of the instance "
                "than the sets before it: name the sets taken of one instance"
            )
            path = os.path.join(step.source, step.entry.stored_name)
        raise InvalidLogSequence(
            f"{following.name} (generation {following.generation}) does not continue "
            f"{previous.name}: {problem}",
            hint=hint,
            path=path,
        )


def _check_images_at(
    fs: FileSystem, base: Manifest, steps: Sequence[RestoreStep], stop_time: int
) -> None:
    """A stop time before the full set's images were pinned: allowed when they hold no
    commit later than it (`images_commit_bound`), else `EndingRestoreLogTooLow` with the
    earliest stop they allow.

    The images are their checkpoint's tree: every commit whose record starts before that
    position is in them, none after. A state at `stop_time` is then theirs exactly when no
    commit before the checkpoint is later than `stop_time`; replay from the checkpoint adds
    the commits up to `stop_time` and stops at the first one after it. An earlier time
    cannot be reached: an image cannot be rolled back."""
    checkpoint = max((image.checkpoint for image in base.images), default=None)
    sources = [s for s in _log_sources(fs, steps) if s.generation >= base.generation_low]
    if checkpoint is None or not sources or sources[0].generation > checkpoint.generation:
        # An offline backup of a clean instance holds no log: its images hold everything up
        # to their shutdown, whose time the set does not record. The surviving logs from
        # the generation of their consistent point on tell it (an online set's own logs
        # always start there); without them, keep to when the set was taken.
        logs_hint = (
            f"; or give the instance's surviving logs from generation "
            f"{max(1, checkpoint.generation)} on (--logs-from), whose records tell when the "
            "images' last commit was"
            if checkpoint is not None and base.generation_low == 0
            else ""
        )
        raise EndingRestoreLogTooLow(
            f"the restore should stop at {_iso_us(stop_time)}, before the backup "
            f"'{base.path}' was taken ({_iso_us(base.started_us)}), and no log given tells "
            "when its images' last commit was",
            hint=f"stop at {_iso_us(base.started_us)} or later (--until-time "
            f"{_iso_us(base.started_us)}), or restore an older full backup{logs_hint}",
            path=base.path,
        )
    bound = images_commit_bound(sources, checkpoint)
    if stop_time >= bound.time_us:
        return
    if bound.commit is not None:
        held = (
            f"already hold a commit of {_iso_us(bound.time_us)} (the record at "
            f"{bound.commit.start}, the last before their checkpoint at {checkpoint})"
        )
    else:
        held = (
            f"already hold commits up to {_iso_us(bound.time_us)} at the latest (no "
            f"commit lies before their checkpoint at {checkpoint} in the set's logs; the log "
            f"generation {checkpoint.generation} they start in was begun then)"
        )
    raise EndingRestoreLogTooLow(
        f"the restore should stop at {_iso_us(stop_time)}, but the images of the full "
        f"backup '{base.path}' {held}: an image cannot be taken back to an earlier state",
        hint=f"stop at {_iso_us(bound.time_us)} or later (--until-time {_iso_us(bound.time_us)}"
        "), or restore an older full backup",
        path=base.path,
    )


def _check_stop_before_gap(
    fs: FileSystem,
    base: Manifest,
    steps: Sequence[RestoreStep],
    stop_time: int,
    gap: JetError,
    high: int,
) -> None:
    """A time stop with a gap (or an unreadable file) in the surviving logs after generation
    `high`: allowed when a complete commit later than `stop_time` lies in the logs before it
    (replay stops at the first such commit and never reaches the gap; commit times do not
    decrease in log order, so no commit at or before `stop_time` lies after it). Otherwise
    the missing generation may hold commits at or before `stop_time`, which replay would
    skip without a word: `gap` is raised, saying so and naming the nearest stops allowed."""
    after, last = first_commit_after(_log_sources(fs, steps), stop_time)
    if after is not None:
        return
    if last is not None:
        earlier = (
            f"stop before the last commit before it, of {_iso_us(last.time_us)} "
            f"(--until-time {_iso_us(last.time_us - 1)}: everything before that commit); or "
        )
        seen = f"the last one before it is of {_iso_us(last.time_us)}"
    else:
        earlier = ""
        seen = "they hold no commit"
    raise type(gap)(
        f"{gap.detail}; the restore should stop at {_iso_us(stop_time)}, and no commit "
        f"after that lies in the logs before the gap ({seen}), so commits at or before it may "
        "be in the missing generation and would be skipped",
        hint=f"{earlier}{_stop_after(base, high)}, or put a good copy of "
        f"{os.path.basename(gap.path or '') or 'the missing file'} back",
        path=gap.path,
    )


def _execute(
    plan: RestorePlan,
    fs: FileSystem,
    progress: Progress | None,
    *,
    copied: Callable[[], None] | None = None,
) -> RestoreResult:
    """Steps 2 to 4 of the module docstring; `copied` is called once every file is copied
    (and synced), before replay."""
    from jetstore.instance.instance import Instance, InstanceOptions
    from jetstore.instance.recovery import RestoreRequest

    target = plan.target
    staging = target + STAGING_SUFFIX
    owner = "restore"
    base = plan.sets[0]
    # Absent when the plan checked: another restore into the target made it since. Its work
    # is not ours to take over, nor to delete on failure.
    try:
        make_staging_directory(
            fs,
            staging,
            lambda: InvalidPath(
                f"'{staging}' appeared while this restore was being planned: another restore "
                f"into '{target}' is running (or was interrupted); nothing was written",
                hint=f"let it finish; if none is running, delete '{staging}', then retry",
                path=staging,
            ),
        )
    except JetError as exc:
        said = _target_failure(exc, plan, fs, staging)
        if said is None:
            raise
        raise said from exc
    emptied = renamed = False
    try:
        # Durable before any file it guards: a staging directory the restore leaves (killed,
        # or the machine down) is refused as an instance (`refuse_backup_set`), where it
        # opened and recovered as the backed-up instance, bound to its log stream.
        marker = os.path.join(staging, RESTORING_MARKER)
        with fs.opened(marker, owner=owner, create=True, exclusive=True):
            pass
        fs.fsync_directory(staging, owner=owner)
        done = 0
        total = plan.total_bytes
        for step in plan.steps:
            destination = os.path.join(staging, step.name)
            out = fs.open(destination, owner=owner, create=True, exclusive=True)
            try:
                offset = 0
                if step.entry is not None:
                    chunks = read_backup_file(step.source, step.entry, fs=fs, owner=owner)
                else:
                    chunks = _read_plain(fs, step.source, owner)
                for chunk in chunks:
                    out.pwrite(chunk, offset)
                    offset += len(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total, step.name)
                out.fdatasync()
            finally:
                out.close()
        fs.fsync_directory(staging, owner=owner)
        if copied is not None:
            copied()
        options: dict[str, Any] = {
            "log_file_size": base.log_file_size,
            "page_size": base.page_size,
        }
        if "control_socket" in InstanceOptions.__dataclass_fields__:
            options["control_socket"] = False
        instance = Instance(staging, InstanceOptions(**options))
        instance.restore_request = RestoreRequest(plan.stop_generation, plan.stop_time_us)
        try:
            try:
                instance._open()
            except JetError as exc:
                raise _named_at_source(exc, plan, staging) from exc
            outcome = instance.recovery
        except BaseException:
            # Closed before its directory is removed: a Ctrl-C as the open returned left the
            # instance running (threads, files, lock) on a directory deleted under it. A
            # failed open has closed itself already.
            with contextlib.suppress(JetError):
                instance.close()
            raise
        instance.close()
        # Restored and closed clean: from here on the directory is the restored instance.
        fs.unlink(marker)
        fs.fsync_directory(staging, owner=owner)
        if fs.exists(target):
            # Checked empty (and no mount point) by the plan, but something may have been
            # put there since: the rmdir (or rename) would fail with ENOTEMPTY, which is no
            # disk error (DiskIO) but a path that is no longer what the plan accepted.
            if fs.is_directory(target) and fs.listdir(target):
                raise InvalidPath(
                    f"restore target '{target}' is no longer empty: files appeared in it "
                    "while the restore ran; nothing of the restore was put there",
                    hint="restore into a new or empty directory (move those files away first)",
                    path=target,
                )
            fs.rmdir(target)
            emptied = True
        fs.rename(staging, target)
        renamed = True
        fs.fsync_directory(os.path.dirname(target), owner=owner)
    except BaseException as exc:
        # After the rename, the restored instance at the target is not known to be durable
        # (its parent's sync failed, or was interrupted): the restore failed, so it is taken
        # back, as a backup set's publish does. Left there, the retry was refused ("not
        # empty") with the failure reported.
        with contextlib.suppress(JetError):
            if renamed:
                fs.remove_tree(target)
            else:
                _remove_staging(fs, staging)
        if emptied:
            with contextlib.suppress(JetError):
                fs.mkdir(target)  # the empty directory the target was
        if isinstance(exc, JetError):
            said = _target_failure(exc, plan, fs, staging) or _source_failure(exc, plan)
            if said is not None:
                raise said from exc
        raise
    finally:
        fs.registry.close_owner(owner)
    assert outcome is not None
    return RestoreResult(
        plan,
        executed=True,
        replayed=outcome.replayed,
        restored_to=str(outcome.restored_to) if outcome.restored_to else None,
        stopped_early=outcome.restore_stopped,
        detached=[(name, str(at)) for name, at in outcome.detached],
        not_restored=[(name, str(at)) for name, at in outcome.not_restored],
        notes=[
            note
            for note in outcome.notes
            if any(note.startswith(f"database {name!r}") for name, _ in outcome.detached)
            or any(note.startswith(f"database {name!r}") for name, _ in outcome.not_restored)
        ],
    )


def _remove_staging(fs: FileSystem, staging: str) -> None:
    """Remove the staging directory, its marker last: whatever a second Ctrl-C (or a file
    that cannot be removed) leaves of it is still refused as an instance. `remove_tree`
    alone removed the marker first (it sorts first), and the copied images and logs left
    opened as the backed-up instance, its log stream continued."""
    first: JetError | None = None
    if fs.is_directory(staging):
        for name in fs.listdir(staging):
            if name == RESTORING_MARKER:
                continue
            try:
                fs.remove_tree(os.path.join(staging, name))
            except JetError as exc:
                first = first or exc
    if first is not None:
        raise first  # the marker stays: what is left is no instance to open
    fs.remove_tree(staging)


def _stop_after(base: Manifest, generation: int) -> str:
    """The way out that ends a restore after `generation`, for a hint. Below the images'
    generation no stop is allowed (`EndingRestoreLogTooLow`): the backup alone is the way
    (an offline set's surviving logs start at its images' generation)."""
    if generation < _image_generation(base):
        return (
            "restore without --logs-from (the backup as it was taken; every later commit is lost)"
        )
    return (
        f"restore up to generation {generation} with --until-generation {generation} (the "
        "commits after it are lost)"
    )


def _image_generation(base: Manifest) -> int:
    """The generation of the latest checkpoint of the full set's images: no stop before it."""
    return max((image.checkpoint.generation for image in base.images), default=base.generation_low)


def _named_at_source(error: JetError, plan: RestorePlan, staging: str) -> JetError:
    """`error` of replay in the staging directory, about a file copied there, said of the file
    it was copied from, with a restore's way out. Said of the copy, it named a file of a
    directory the failed restore then deleted, with recovery's advice ("restore it from
    backup", `--accept-data-loss`), which does not apply to a restore."""
    copies = {os.path.join(staging, step.name): step for step in plan.steps}
    step = copies.get(error.path or "")
    if step is None or _out_of_space(error) or error.category == "io":
        # A full disk, or a disk error, on the copy is the target's, not the source's: the
        # source was read and checked whole (`_target_failure`).
        return error
    detail = error.detail
    for copy, origin in copies.items():
        source = origin.source if origin.entry is None else f"{origin.source}: {origin.name}"
        detail = detail.replace(f"'{copy}'", f"'{source}'").replace(copy, source)
    if step.entry is not None:
        hint = (
            f"check the backup set with `jetstore verify-backup {step.source}`; restore "
            "another set if it is damaged"
        )
        path = os.path.join(step.source, step.entry.stored_name)
    else:
        name = os.path.basename(step.source)
        stop = _stop_after(plan.sets[0], (step.generation or 0) - 1)
        hint = f"{stop}, or put a good copy of {name} back into '{os.path.dirname(step.source)}'"
        path = step.source
    return type(error)(f"{detail}; nothing was written to '{plan.target}'", hint=hint, path=path)


def _out_of_space(error: JetError) -> bool:
    return isinstance(error, DiskFull | LogDiskFull) or error.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
    )


def _target_failure(
    error: JetError, plan: RestorePlan, fs: FileSystem, staging: str
) -> JetError | None:
    """`error` said as a restore's when it is the target's file system failing under the
    copy, replay or the restored instance's log (all write in `staging`): a full disk (or
    quota) anywhere, a permission refused or an I/O error there. Said as it was, it blamed
    the backup set once replay had written a copied database ("check the backup set"), or
    told to "reopen the instance", which never existed. None for any other error."""
    parent = os.path.dirname(plan.target)
    left = ""
    outcome = f"nothing was written to '{plan.target}'"
    with contextlib.suppress(JetError):  # a look on a failing disk: the error stands
        if fs.exists(staging):
            left = f"its staging directory '{staging}' could not be removed: delete it, then "
        elif fs.is_directory(plan.target) and fs.listdir(plan.target):
            # Renamed into place, then not taken back (its parent's sync failed first).
            left = f"delete what is left in '{plan.target}', then "
            outcome = f"the restore into '{plan.target}' was not taken back whole"
    detail = error.detail or error.description
    if _out_of_space(error):
        detail = (
            f"{detail}: the file system holding '{parent}' has no room for the restore (its "
            f"files alone are {plan.total_bytes} bytes, replay writes more)"
        )
        hint = (
            f"{left}free space on the file system holding '{parent}' (or restore into a "
            "directory on another one with --to), then retry"
        )
    elif not (_within(error.path, staging) or error.path == parent) or (
        isinstance(error, FileAccessDenied) and error.errno is None  # a lock, not the OS
    ):
        # The parent: its sync after the rename (the restore is then taken back).
        return None
    elif isinstance(error, FileAccessDenied):
        detail = f"{detail}: the restore may not write in '{parent}'"
        hint = (
            f"{left}give this process write access to '{parent}' (or restore into a directory "
            "it may write in, with --to), then retry"
        )
    elif error.category == "io":
        detail = f"{detail}: the disk holding '{parent}' failed under the restore"
        hint = (
            f"{left}check the disk holding '{parent}' (system log, SMART data, cabling, "
            "network storage), then retry; or restore into a directory on another disk (--to)"
        )
    else:
        return None
    said = type(error)(f"{detail}; {outcome}", hint=hint, path=error.path)
    said.errno = error.errno
    return said


def _source_failure(error: JetError, plan: RestorePlan) -> JetError | None:
    """`error`, an I/O error reading a file the restore copies (a set's, a surviving log),
    with a restore's way out; it kept the engine's generic advice ("reopen the instance",
    `jetstore logs verify DIR`), for a set that is no instance. None for any other error."""
    if error.category != "io" or error.path is None:
        return None
    for step in plan.steps:
        if step.entry is not None:
            path = os.path.join(step.source, step.entry.stored_name)
            way_out = (
                f"restore from a copy of the backup set '{step.source}' on another disk, or "
                "from another set"
            )
        else:
            path = step.source
            directory = os.path.dirname(path)
            way_out = (
                f"{_stop_after(plan.sets[0], (step.generation or 0) - 1)}, or put a good "
                f"copy of {os.path.basename(path)} back into '{directory}'"
            )
        if path == error.path:
            said = type(error)(
                f"{error.detail or error.description}: reading it for the restore failed; "
                f"nothing was written to '{plan.target}'",
                hint=f"check the disk holding '{os.path.dirname(path)}' (system log, SMART "
                f"data, cabling, network storage), then retry; or {way_out}",
                path=error.path,
            )
            said.errno = error.errno
            return said
    return None


def _within(path: str | None, directory: str) -> bool:
    return path is not None and (path == directory or path.startswith(directory + os.sep))


def _read_plain(fs: FileSystem, path: str, owner: str) -> Iterator[bytes]:
    with fs.opened(path, owner=owner, writable=False) as source:
        offset = 0
        size = source.size()
        while offset < size:
            chunk = source.pread(min(_COPY_CHUNK, size - offset), offset)
            if not chunk:
                break
            yield chunk
            offset += len(chunk)


__all__ = ["RestorePlan", "RestoreResult", "RestoreStep", "plan_restore", "restore"]
