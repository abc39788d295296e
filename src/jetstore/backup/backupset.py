"""Backup sets: a backup written to a directory, its manifest, and reading it back checked.

This module owns the on-disk form of a backup (issue 4, items 3 and 5):

    DEST/
      manifest.json           what the set holds, with its own CRC32C inside
      main.edb[.zst]          one image per database (`jetstore.backup.image`)
      edb0000002A.log[.zst]   the log generations (`jetstore.backup.logcopy`)

- `write_backup_set(session, dest)` streams every file of an online `BackupSession` into the
  set, then completes the session; `jetstore.backup.offline` writes the same form from a
  stopped instance.
- `read_manifest(path)` and `read_backup_file(path, entry, fs=, owner=)` are how a set is
  read back (restore builds on them); `jetstore.backup.verify.verify_backup` checks a set.

The manifest (`manifest.json`, UTF-8 JSON) carries `"format": "jetstore-backup-set"`,
`"manifest_version": 1` and `"checksum"`: `"crc32c:<8 hex digits>"` over the canonical
encoding of every other field (`json.dumps(..., sort_keys=True, separators=(",", ":"))`).
Each file entry has the file's name in a restored instance directory, the name stored in the
set (`NAME.zst` when zstd-compressed, one zstd frame per file), the size and CRC32C of the
uncompressed content, the stored size, and the database or generation it holds.

Invariants:
- A set is written into the sibling `DEST.partial` (marked by `.jetstore-partial`), every file
  and the directory are fsynced, and only then is it renamed to DEST and DEST's parent fsynced:
  a directory named DEST is always a complete, durable set. DEST must not exist or be an
  empty directory that is no mount point and no symbolic link (the rename could not replace
  a mount point, and would replace a link, not fill its directory).
- `session.complete()` (backup history, log truncation) runs only after that rename is
  durable: no log is ever deleted on the strength of a backup that could still vanish.
- Any failure before that point aborts the session (nothing recorded, no log deleted),
  removes `DEST.partial` (or DEST, when only the sync of its parent after the rename failed:
  the set is not known to be durable) and raises a `JetError` (never an `OSError`).
- `DEST.partial` is created exclusively (`make_staging_directory`): whoever creates it owns
  it. An existing one, marked or not, is refused (`InvalidPath`, naming it) and left alone:
  the marker alone cannot tell a crashed backup's leftover from a running backup's work.
- Every handle on the destination is opened through the instance's `FileSystem` under the
  session's owner, so the session's cleanup (`close_owner`) releases anything left open, and
  each handle is closed as soon as its file is written.
- `read_backup_file` yields the content and, at its end, checks size and CRC32C against the
  manifest: content that does not match is never passed on without an error at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final, cast

import google_crc32c
import zstandard

from jetstore.backup.session import BackupFile, BackupKind, BackupResult, BackupSession
from jetstore.errors import (
    BackupAbortByServer,
    FileNotFound,
    InvalidBackup,
    InvalidPath,
    JetError,
    ReadVerifyFailure,
    from_os_error,
)
from jetstore.format.common import Signature, format_time_us, now_us
from jetstore.format.filenames import MAX_GENERATION
from jetstore.format.positions import LogPosition
from jetstore.io.files import File, FileSystem, absolute_path

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "PARTIAL_MARKER",
    "PARTIAL_SUFFIX",
    "RESTORING_MARKER",
    "Manifest",
    "ManifestFile",
    "ManifestImage",
    "Progress",
    "read_backup_file",
    "read_manifest",
    "refuse_backup_set",
    "stored_size_mismatch",
    "write_backup_set",
]

MANIFEST_NAME: Final = "manifest.json"
MANIFEST_FORMAT: Final = "jetstore-backup-set"
MANIFEST_VERSION: Final = 1
PARTIAL_SUFFIX: Final = ".partial"
PARTIAL_MARKER: Final = ".jetstore-partial"
#: Marks a restore's staging directory (`jetstore.backup.restore`) until its instance is
#: restored and closed: what an interrupted restore leaves is no instance to open.
RESTORING_MARKER: Final = ".jetstore-restoring"
ZSTD_SUFFIX: Final = ".zst"
ZSTD_LEVEL: Final = 3
#: Bytes read from a stored file per call while reading a set back.
READ_CHUNK: Final = 1024 * 1024
#: A manifest larger than this is not one of ours.
MANIFEST_LIMIT: Final = 64 * 1024 * 1024
#: What offline backups say about logs (see `jetstore.backup.offline`).
LOGS_INCLUDED: Final = "included"
LOGS_NONE: Final = "none"

#: `progress(done_bytes, total_bytes, file_name)`; total_bytes grows once, when the log list
#: of an online backup is taken (after the database images).
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestFile:
    """One file of a backup set."""

    name: str  # its name in a restored instance directory
    stored_name: str  # its name inside the set (NAME.zst when compressed)
    kind: str  # "database" or "log"
    size: int  # bytes of content (uncompressed)
    stored_size: int  # bytes of the stored file
    crc32c: int  # CRC32C of the content (uncompressed)
    database: str | None = None
    generation: int | None = None
    compression: str = "none"  # "none" or "zstd"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stored_name": self.stored_name,
            "kind": self.kind,
            "size": self.size,
            "stored_size": self.stored_size,
            "crc32c": f"{self.crc32c:08x}",
            "database": self.database,
            "generation": self.generation,
            "compression": self.compression,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestFile:
        return cls(
            # Both are joined to a directory (the restore's, the set's): a name with path
            # parts would write or read outside it (the checksum is no signature).
            name=_plain_name(data, "name"),
            stored_name=_plain_name(data, "stored_name"),
            kind=_choice(data, "kind", ("database", "log")),
            size=_int(data, "size"),
            stored_size=_int(data, "stored_size"),
            crc32c=int(_str(data, "crc32c"), 16),
            database=_opt_str(data, "database"),
            generation=_opt_generation(data, "generation"),
            compression=_choice(data, "compression", ("none", "zstd")),
        )


@dataclass(frozen=True)
class ManifestImage:
    """What a backup set says about one database image."""

    name: str
    db_id: int
    signature: Signature
    log_signature: Signature
    page_size: int
    page_count: int
    checkpoint: LogPosition
    generation_min_required: int
    clean: bool  # the image header says clean shutdown (offline backups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "db_id": self.db_id,
            "signature": _signature_dict(self.signature),
            "log_signature": _signature_dict(self.log_signature),
            "page_size": self.page_size,
            "page_count": self.page_count,
            "checkpoint": {
                "generation": self.checkpoint.generation,
                "offset": self.checkpoint.offset,
                "text": str(self.checkpoint),
            },
            "generation_min_required": self.generation_min_required,
            "clean": self.clean,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestImage:
        checkpoint = _dict(data, "checkpoint")
        return cls(
            name=_str(data, "name"),
            db_id=_int(data, "db_id"),
            signature=_signature_from(_dict(data, "signature")),
            log_signature=_signature_from(_dict(data, "log_signature")),
            page_size=_int(data, "page_size"),
            page_count=_int(data, "page_count"),
            checkpoint=LogPosition(_int(checkpoint, "generation"), _int(checkpoint, "offset")),
            generation_min_required=_int(data, "generation_min_required"),
            clean=_bool(data, "clean"),
        )


@dataclass
class Manifest:
    """The manifest of a backup set (`manifest.json`)."""

    kind: BackupKind
    offline: bool
    session: int | None  # the online session's id (None offline)
    source: str  # the instance directory backed up
    log_signature: Signature
    log_file_size: int
    page_size: int
    generation_low: int  # 0 (and generation_high 0) when the set holds no log
    generation_high: int
    logs: str  # LOGS_INCLUDED, or LOGS_NONE (offline: see `logs_note`)
    logs_note: str
    images: list[ManifestImage]
    files: list[ManifestFile]
    databases: list[str]  # every database attached when the backup began
    engine_version: str
    format_version: int
    started_us: int
    completed_us: int
    compression: str  # "none" or "zstd"
    manifest_version: int = MANIFEST_VERSION
    #: The set's directory (where it was written or read from); not stored in the manifest.
    path: str = field(default="", compare=False)

    @property
    def generations(self) -> list[int]:
        return [f.generation for f in self.files if f.kind == "log" and f.generation is not None]

    @property
    def database_files(self) -> list[ManifestFile]:
        return [f for f in self.files if f.kind == "database"]

    @property
    def log_files(self) -> list[ManifestFile]:
        return [f for f in self.files if f.kind == "log"]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def stored_size(self) -> int:
        return sum(f.stored_size for f in self.files)

    def file(self, name: str) -> ManifestFile:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise FileNotFound(
            f"backup set '{self.path}' has no file {name!r}",
            hint="list the set's files with `jetstore verify-backup PATH`",
            path=os.path.join(self.path, name),
        )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's fields as stored (without the checksum, which covers them)."""
        return {
            "format": MANIFEST_FORMAT,
            "manifest_version": self.manifest_version,
            "kind": self.kind.value,
            "offline": self.offline,
            "session": self.session,
            "source": self.source,
            "log_signature": _signature_dict(self.log_signature),
            "log_file_size": self.log_file_size,
            "page_size": self.page_size,
            "generation_low": self.generation_low,
            "generation_high": self.generation_high,
            "logs": self.logs,
            "logs_note": self.logs_note,
            "compression": self.compression,
            "databases": list(self.databases),
            "images": [image.to_dict() for image in self.images],
            "files": [entry.to_dict() for entry in self.files],
            "total_size": self.total_size,
            "stored_size": self.stored_size,
            "engine_version": self.engine_version,
            "format_version": self.format_version,
            "started_us": self.started_us,
            "completed_us": self.completed_us,
            "started": format_time_us(self.started_us),
            "completed": format_time_us(self.completed_us),
        }

    def encode(self) -> bytes:
        """`manifest.json` as written: the fields plus their checksum."""
        body = self.to_dict()
        document = {**body, "checksum": manifest_checksum(body)}
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str = "") -> Manifest:
        """Decode the stored fields (KeyError, TypeError or ValueError when malformed)."""
        version = _int(data, "manifest_version")
        if version != MANIFEST_VERSION:
            raise ValueError(
                f"manifest version {version} is not supported (this engine reads version "
                f"{MANIFEST_VERSION})"
            )
        return cls(
            kind=BackupKind(_str(data, "kind")),
            offline=_bool(data, "offline"),
            session=_opt_int(data, "session"),
            source=_str(data, "source"),
            log_signature=_signature_from(_dict(data, "log_signature")),
            log_file_size=_int(data, "log_file_size"),
            page_size=_int(data, "page_size"),
            generation_low=_generation(data, "generation_low"),
            generation_high=_generation(data, "generation_high"),
            logs=_choice(data, "logs", (LOGS_INCLUDED, LOGS_NONE)),
            logs_note=_str(data, "logs_note"),
            images=[ManifestImage.from_dict(_as_dict(i)) for i in _list(data, "images")],
            files=[ManifestFile.from_dict(_as_dict(f)) for f in _list(data, "files")],
            databases=[str(name) for name in _list(data, "databases")],
            engine_version=_str(data, "engine_version"),
            format_version=_int(data, "format_version"),
            started_us=_int(data, "started_us"),
            completed_us=_int(data, "completed_us"),
            compression=_choice(data, "compression", ("none", "zstd")),
            manifest_version=version,
            path=path,
        )


def manifest_checksum(body: dict[str, Any]) -> str:
    """`crc32c:<8 hex digits>` over the canonical JSON encoding of `body`."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"crc32c:{int(google_crc32c.value(canonical.encode('utf-8'))):08x}"


def _signature_dict(signature: Signature) -> dict[str, Any]:
    return {
        "random": signature.random.hex(),
        "time_us": signature.time_us,
        "text": "none"
        if signature.is_none
        else f"{signature.random.hex()}@{format_time_us(signature.time_us)}",
    }


def _signature_from(data: dict[str, Any]) -> Signature:
    return Signature(bytes.fromhex(_str(data, "random")), _int(data, "time_us"))


def _as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, found {type(value).__name__}")
    return value


def _dict(data: dict[str, Any], key: str) -> dict[str, Any]:
    return _as_dict(data[key])


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise TypeError(f"{key!r} must be a list")
    return value


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string")
    return value


def _plain_name(data: dict[str, Any], key: str) -> str:
    """A file name without any path part (no separator, not '.' or '..', not empty)."""
    value = _str(data, key)
    separators = [os.sep, *([os.altsep] if os.altsep else [])]
    if value in ("", ".", "..") or "\0" in value or any(sep in value for sep in separators):
        raise ValueError(f"{key!r} is {value!r}, not a plain file name")
    return value


def _generation(data: dict[str, Any], key: str) -> int:
    """A log generation number (0 for none): no log file name holds one above MAX_GENERATION."""
    value = _int(data, key)
    if value > MAX_GENERATION:
        raise ValueError(f"{key!r} is {value}, above the highest log generation {MAX_GENERATION}")
    return value


def _opt_generation(data: dict[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _generation(data, key)


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _str(data, key)


def _int(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{key!r} must be a non-negative integer")
    return value


def _opt_int(data: dict[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key!r} must be true or false")
    return value


def _choice(data: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _str(data, key)
    if value not in choices:
        raise ValueError(f"{key!r} is {value!r}, expected one of {', '.join(choices)}")
    return value


# --------------------------------------------------------------------------- reading


def refuse_backup_set(
    fs: FileSystem, directory: str, *, what: str, restoring: bool = False
) -> None:
    """InvalidPath if `directory` is a backup set (it holds `manifest.json`) or a set being
    written (`.jetstore-partial`): `what` (opening it as an instance, a tool that rewrites a
    database file) would change its files, and a set must keep matching its manifest.

    So is a restore's staging directory (`.jetstore-restoring`), unless `restoring` (the
    restore's own open there): left by a restore that was killed, it holds the backup's
    images and logs, which an ordinary open replays as the original instance's, its log
    stream continued (D11: a restored instance never shares it)."""
    if not restoring and fs.exists(os.path.join(directory, RESTORING_MARKER)):
        raise InvalidPath(
            f"'{directory}' is the staging directory of a restore still running, or left by "
            f"an interrupted restore (it holds {RESTORING_MARKER}), not an instance "
            f"directory: {what} would run it on as the backed-up instance, not as a restore",
            hint=f"when no restore into it is running, delete '{directory}' and run the "
            "restore again (`jetstore restore SET... --to DIR`)",
            path=directory,
        )
    if fs.exists(os.path.join(directory, MANIFEST_NAME)):
        raise InvalidPath(
            f"'{directory}' is a backup set (it holds {MANIFEST_NAME}), not an instance "
            f"directory: {what} would change its files, and the set would no longer match its "
            "manifest",
            hint="restore it into a new directory with `jetstore restore SET --to NEW_DIR` "
            "(`jetstore.restore`) and work on the restored instance; `jetstore verify-backup "
            "SET` checks the set",
            path=directory,
        )
    if fs.exists(os.path.join(directory, PARTIAL_MARKER)):
        raise InvalidPath(
            f"'{directory}' is a backup set still being written, or left by a backup that was "
            f"interrupted (it holds {PARTIAL_MARKER}), not an instance directory",
            hint="it is no usable backup (the next backup to its destination removes it); "
            "restore a complete set with `jetstore restore SET --to NEW_DIR`",
            path=directory,
        )


def manifest_path(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(set directory, manifest file) for a set directory or its manifest file."""
    text = os.path.abspath(os.fspath(path))
    if os.path.basename(text) == MANIFEST_NAME and not os.path.isdir(text):
        return os.path.dirname(text), text
    return text, os.path.join(text, MANIFEST_NAME)


def read_manifest(path: str | os.PathLike[str], *, fs: FileSystem | None = None) -> Manifest:
    """The manifest of the backup set at `path` (its directory, or its `manifest.json`).

    FileNotFound when the set or its manifest is missing; InvalidBackup when the manifest is
    damaged (checksum), not a jetstore backup manifest, or of an unknown version.
    """
    fs = fs if fs is not None else FileSystem()
    directory, file_path = manifest_path(path)
    if not fs.exists(directory):
        raise FileNotFound(
            f"backup set '{directory}' does not exist",
            hint="give the directory a backup was written to (`jetstore backup --to DEST`)",
            path=directory,
        )
    if not fs.exists(file_path):
        partial = fs.exists(os.path.join(directory, PARTIAL_MARKER))
        raise FileNotFound(
            f"'{directory}' has no {MANIFEST_NAME}: "
            + (
                "it is an unfinished backup (the backup that wrote it stopped before the end)"
                if partial
                else "it is not a backup set, or its manifest was removed"
            ),
            hint="use another backup set; a set without its manifest cannot be checked or restored",
            path=file_path,
        )
    data = fs.read_file(file_path, owner="backup-manifest", limit=MANIFEST_LIMIT)

    def damaged(why: str) -> InvalidBackup:
        return InvalidBackup(
            f"backup manifest '{file_path}' {why}",
            hint="the backup set is damaged or is not a jetstore backup set; use another set",
            path=file_path,
        )

    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: nested deeper than the interpreter's limit (never one of ours).
        raise damaged(f"is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise damaged("is not a JSON object")
    if document.get("format") != MANIFEST_FORMAT:
        raise damaged(f"is not a jetstore backup manifest (format {document.get('format')!r})")
    stored = document.pop("checksum", None)
    if not isinstance(stored, str):
        raise damaged("has no checksum")
    computed = manifest_checksum(document)
    if stored != computed:
        raise damaged(f"fails its checksum (stored {stored}, computed {computed})")
    try:
        manifest = Manifest.from_dict(document, path=directory)
    except (KeyError, TypeError, ValueError, JetError) as exc:
        detail = f"field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise damaged(f"is malformed: {detail}") from None
    return manifest


class _Reader:
    """A file-like view of a `File` for zstd's stream reader (sequential reads)."""

    def __init__(self, file: File) -> None:
        self._file = file
        self.offset = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = READ_CHUNK
        data = self._file.pread(size, self.offset)
        self.offset += len(data)
        return data


def read_backup_file(
    path: str | os.PathLike[str], entry: ManifestFile, *, fs: FileSystem, owner: str
) -> Iterator[bytes]:
    """The content of `entry` of the set at `path`, decompressed, in chunks.

    The stored size is checked before the first byte, the content's size and CRC32C after
    the last (`ReadVerifyFailure` naming the file); a missing file is `FileNotFound`. The
    handle is opened under `owner` and closed when the iterator ends or is closed.
    """
    directory, _manifest = manifest_path(path)
    stored = os.path.join(directory, entry.stored_name)
    # The open's FileNotFound is the set's missing file; the block's own errors pass as
    # they are (entered is set as the block's first step).
    entered = False
    try:
        with fs.opened(stored, owner=owner, writable=False) as file:
            entered = True
            stored_size = file.size()
            if stored_size != entry.stored_size:
                raise stored_size_mismatch(stored, stored_size, entry)
            crc = 0
            size = 0
            for chunk in _stored_chunks(file, entry, stored):
                crc = int(google_crc32c.extend(crc, chunk))
                size += len(chunk)
                if size > entry.size:
                    break
                yield chunk
            if size != entry.size:
                raise ReadVerifyFailure(
                    f"'{stored}' holds {size}{'+' if size > entry.size else ''} bytes of content, "
                    f"its manifest says {entry.size}",
                    hint="the backup set is damaged; use another set",
                    path=stored,
                )
            if crc != entry.crc32c:
                raise ReadVerifyFailure(
                    f"the content of '{stored}' fails its CRC32C (manifest {entry.crc32c:08x}, "
                    f"computed {crc:08x})",
                    hint="the backup set is damaged; use another set",
                    path=stored,
                )
    except FileNotFound as exc:
        if entered:
            raise
        raise FileNotFound(
            f"backup set '{directory}' is missing {entry.stored_name}, listed in its manifest",
            hint="the backup set is incomplete; use another set",
            path=stored,
        ) from exc


def stored_size_mismatch(stored: str, size: int, entry: ManifestFile) -> ReadVerifyFailure:
    """The error for the set's file `stored` of `size` bytes, where `entry` says otherwise."""
    return ReadVerifyFailure(
        f"'{stored}' is {size} bytes, its manifest says {entry.stored_size}",
        hint="the backup set is damaged (a file was truncated or replaced); use another set",
        path=stored,
    )


def _stored_chunks(file: File, entry: ManifestFile, stored: str) -> Iterator[bytes]:
    if entry.compression == "none":
        offset = 0
        while offset < entry.stored_size:
            data = file.pread(min(READ_CHUNK, entry.stored_size - offset), offset)
            if not data:
                return
            offset += len(data)
            yield data
        return
    source = cast(IO[bytes], _Reader(file))  # zstd only calls read()
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=READ_CHUNK)
    try:
        while True:
            try:
                data = reader.read(READ_CHUNK)
            except zstandard.ZstdError as exc:
                raise ReadVerifyFailure(
                    f"'{stored}' is not valid zstd data: {exc}",
                    hint="the backup set is damaged; use another set",
                    path=stored,
                ) from None
            if not data:
                return
            yield data
    finally:
        reader.close()  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- writing


def refuse_symbolic_link(path: str, *, what: str, option: str) -> None:
    """InvalidPath when `path` (a backup's DEST, a restore's target) is a symbolic link: the
    staging directory built next to it is renamed into its place, which replaces the link
    (or fails with ENOTDIR, said as "a parent is a file", once all the work is done), never
    fills the directory it names. `option` names the path in the hint (`--to`)."""
    if not os.path.islink(path):
        return
    real = os.path.realpath(path)
    raise InvalidPath(
        f"{what} '{path}' is a symbolic link (to '{real}'): the files are written next to it "
        "and renamed into its place, which would replace the link, not fill the directory "
        "it names",
        hint=f"name the directory itself ({option} {real}), or a new one",
        path=path,
    )


def make_staging_directory(fs: FileSystem, path: str, refusal: Callable[[], JetError]) -> None:
    """Create the staging directory `path` (a backup's `DEST.partial`, a restore's
    `<target>.restoring`), which must not exist: whoever creates it owns it, so two writers
    into one destination never mix their files, and a failure removes only its own work. An
    existing `path` raises `refusal()` (which says who may have made it and what to do)."""
    try:
        fs.mkdir(path)
    except JetError:
        if not fs.exists(path):
            raise
        raise refusal() from None


class SetWriter:
    """Writes the files of one backup set into `DEST.partial`, then publishes it as DEST.

    Shared by online (`write_backup_set`) and offline (`jetstore.backup.offline`) backups.
    Every handle is opened through `fs` under `owner`.
    """

    def __init__(
        self,
        fs: FileSystem,
        dest: str | os.PathLike[str],
        *,
        owner: str,
        compress: bool,
        progress: Progress | None,
    ) -> None:
        self.fs = fs
        self.dest = absolute_path(dest, what="backup set")
        self.partial = self.dest + PARTIAL_SUFFIX
        self.owner = owner
        self.compress = compress
        self.progress = progress
        self.entries: list[ManifestFile] = []
        self.done_bytes = 0
        self.total_bytes = 0
        self._created = False
        self._renamed = False
        self._durable = False

    # ---------------------------------------------------------- destination

    def prepare(self) -> None:
        """Check DEST (absent or an empty directory) and create `DEST.partial`."""
        fs = self.fs
        dest = self.dest
        hint = "give a new directory (or an empty one) for the backup set"
        refuse_symbolic_link(dest, what="backup destination", option="--to")
        if fs.exists(dest):
            if not fs.is_directory(dest):
                raise InvalidPath(
                    f"backup destination '{dest}' is not a directory", hint=hint, path=dest
                )
            if fs.listdir(dest):
                raise InvalidPath(
                    f"backup destination '{dest}' exists and is not empty", hint=hint, path=dest
                )
            if os.path.ismount(dest):
                raise InvalidPath(
                    f"backup destination '{dest}' is a mount point: the set is written next to "
                    f"it ('{self.partial}', on the file system above) and renamed into its "
                    "place, which a mount point cannot be",
                    hint=f"give a directory inside it: {os.path.join(dest, 'NAME')}",
                    path=dest,
                )
        parent = os.path.dirname(dest)
        missing: list[str] = []
        probe = parent
        while not fs.exists(probe) and os.path.dirname(probe) != probe:
            missing.append(probe)
            probe = os.path.dirname(probe)
        fs.makedirs(parent)
        make_staging_directory(fs, self.partial, self._partial_exists)
        self._created = True
        # The new directories (the set's parents, and the partial directory) must be durable
        # before anything relies on them: sync each directory that gained an entry.
        for directory in sorted({parent, *(os.path.dirname(d) for d in missing)}, key=len):
            fs.fsync_directory(directory, owner=self.owner)
        with fs.opened(os.path.join(self.partial, PARTIAL_MARKER), owner=self.owner, create=True):
            pass

    def _partial_exists(self) -> InvalidPath:
        if not self.fs.exists(os.path.join(self.partial, PARTIAL_MARKER)):
            return InvalidPath(
                f"'{self.partial}' exists and was not left by an interrupted backup (it holds "
                f"no {PARTIAL_MARKER}); nothing was written",
                hint=f"move it away; the backup writes into it before renaming it to {self.dest}",
                path=self.partial,
            )
        # The marker is there from the start of a backup to its rename: a running backup's
        # directory looks just like an interrupted one's, so it is never removed here.
        return InvalidPath(
            f"'{self.partial}' exists: another backup to '{self.dest}' is running, or one was "
            "interrupted and left it; nothing was written",
            hint=f"check that no backup to '{self.dest}' is running, then delete "
            f"'{self.partial}' and retry",
            path=self.partial,
        )

    def _remove_partial(self) -> None:
        self._remove_directory(self.partial)

    def _remove_directory(self, directory: str) -> None:
        fs = self.fs
        for name in fs.listdir(directory):
            fs.unlink(os.path.join(directory, name))
        fs.rmdir(directory)
        fs.fsync_directory(os.path.dirname(directory), owner=self.owner)

    @property
    def durable(self) -> bool:
        """The set is whole and durable at `dest` (`publish` got past its last sync)."""
        return self._durable

    def discard(self) -> None:
        """Remove what this attempt wrote: `DEST.partial`, or DEST itself when the rename
        happened but its parent could not be synced (the set is not known to be durable).
        Best effort: a leftover `DEST.partial` is named by the next attempt's refusal."""
        if not self._created or self._durable:
            return
        try:
            if self._renamed:
                if self.fs.exists(self.dest):
                    self._remove_directory(self.dest)
            elif self.fs.exists(self.partial):
                self._remove_partial()
        except JetError:
            pass  # DEST.partial stays, marked: the next backup to DEST refuses, naming it

    # ---------------------------------------------------------- files

    def announce(self, size: int) -> None:
        """`size` more bytes will be written (for the progress total)."""
        self.total_bytes += size
        self._report("")

    def _report(self, name: str) -> None:
        if self.progress is not None:
            self.progress(self.done_bytes, self.total_bytes, name)

    def add(self, file: BackupFile, chunks: Iterable[bytes]) -> ManifestFile:
        """Write `file` from `chunks` (its whole content) into the set; return its entry."""
        compression = "zstd" if self.compress else "none"
        stored_name = file.name + ZSTD_SUFFIX if self.compress else file.name
        path = os.path.join(self.partial, stored_name)
        compressor = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj() if self.compress else None
        )
        crc = 0
        size = 0
        offset = 0
        # `opened`, not `out = fs.open(...)` before a `try`: a Ctrl-C as the open returned left
        # the file open, and a control client's owner (`backup-set:DEST`) is closed by nobody.
        with self.fs.opened(path, owner=self.owner, create=True, exclusive=True) as out:
            try:
                for chunk in chunks:
                    crc = int(google_crc32c.extend(crc, chunk))
                    size += len(chunk)
                    data = compressor.compress(chunk) if compressor is not None else chunk
                    if data:
                        out.pwrite(data, offset)
                        offset += len(data)
                    self.done_bytes += len(chunk)
                    self._report(file.name)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # a generator left early releases what it holds now
            if compressor is not None:
                tail = compressor.flush()
                if tail:
                    out.pwrite(tail, offset)
                    offset += len(tail)
            if size != file.size:
                raise BackupAbortByServer(
                    f"{file.name} streamed {size} bytes, the backup listed {file.size}",
                    hint="take the backup again",
                    path=path,
                )
            out.fsync()
        entry = ManifestFile(
            name=file.name,
            stored_name=stored_name,
            kind=file.kind,
            size=size,
            stored_size=offset,
            crc32c=crc,
            database=file.database,
            generation=file.generation,
            compression=compression,
        )
        self.entries.append(entry)
        return entry

    # ---------------------------------------------------------- publish

    def publish(self, manifest: Manifest) -> Manifest:
        """Write the manifest, make everything durable, rename `DEST.partial` to DEST."""
        fs = self.fs
        manifest.files = list(self.entries)
        manifest.path = self.dest
        with fs.opened(
            os.path.join(self.partial, MANIFEST_NAME), owner=self.owner, create=True, exclusive=True
        ) as out:
            out.pwrite(manifest.encode(), 0)
            out.fsync()
        fs.unlink(os.path.join(self.partial, PARTIAL_MARKER))
        fs.fsync_directory(self.partial, owner=self.owner)
        # An empty directory is replaced atomically by the rename (POSIX), but not if it
        # gained a file since `prepare`.
        if fs.exists(self.dest) and fs.listdir(self.dest):
            raise InvalidPath(
                f"backup destination '{self.dest}' is no longer empty",
                hint="give a new directory for the backup set",
                path=self.dest,
            )
        fs.rename(self.partial, self.dest)
        self._renamed = True
        fs.fsync_directory(os.path.dirname(self.dest), owner=self.owner)
        self._durable = True
        return manifest


def write_backup_set(
    session: BackupSession,
    dest: str | os.PathLike[str],
    *,
    compress: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """Stream every file of `session` into the new backup set `dest`, then complete it.

    `dest` must not exist or be an empty directory. The set is durable at `dest` before
    `session.complete()` records the backup and truncates logs. On any failure before that,
    the session is aborted, the partial set removed and a `JetError` raised. If `complete()`
    itself fails (its header history write: the instance then fails too, D9), the set at
    `dest` stays (it is whole and durable; no log was deleted) and its error is raised, naming
    `dest` and saying what the instance's history holds (`completion_failed`). A log that
    cannot be deleted by the truncation after it is not an error: it stays (event 142).
    """
    fs = session.instance.fs
    writer = SetWriter(fs, dest, owner=session.owner, compress=compress, progress=progress)
    try:
        writer.prepare()
        databases = session.database_files()
        writer.announce(sum(f.size for f in databases))
        for file in databases:
            writer.add(file, session.read(file))
        logs = session.log_files()
        writer.announce(sum(f.size for f in logs))
        for file in logs:
            writer.add(file, session.read(file))
        result = session.result()
        manifest = writer.publish(manifest_from_result(result, compress=compress, path=writer.dest))
    except BaseException as exc:
        error = _as_jet_error(exc, writer)
        session.abort(
            f"writing the backup set to '{writer.dest}' failed"
            + (f" ({error.name}: {error.detail})" if error is not None else "")
        )
        writer.discard()
        if error is None or error is exc:
            raise
        raise error from exc
    try:
        session.complete()
    except JetError as exc:
        raise completion_failed(exc, writer.dest, session.kind.value) from exc
    return manifest


def completion_failed(error: JetError, dest: str, kind: str) -> JetError:
    """`error` (`BackupSession.complete()` failed, in this process or in the instance a
    control client talks to) for the owner of the set already published at `dest`: that set
    is whole and durable, so it is kept, and `error` says what the instance recorded, deleted
    and is now in."""
    return type(error)(
        f"the {kind} backup set '{dest}' is complete and durable and can be restored from, "
        f"but {error.detail}",
        hint=f"keep '{dest}' to restore from (`jetstore verify-backup` checks it); {error.hint}",
        path=dest,
    )


def _as_jet_error(exc: BaseException, writer: SetWriter) -> JetError | None:
    """The JetError to raise for `exc` (None: re-raise it, e.g. KeyboardInterrupt)."""
    if isinstance(exc, JetError):
        return exc
    if isinstance(exc, OSError):
        return from_os_error(exc, op="write backup set", path=writer.partial)
    if isinstance(exc, zstandard.ZstdError | MemoryError):
        return BackupAbortByServer(
            f"writing the backup set '{writer.dest}' failed: {type(exc).__name__}: {exc}",
            hint="take the backup again",
            path=writer.dest,
        )
    return None


def manifest_from_result(result: BackupResult, *, compress: bool, path: str) -> Manifest:
    """The manifest of an online backup (files are filled in by `SetWriter.publish`)."""
    return Manifest(
        kind=result.kind,
        offline=False,
        session=result.session,
        source=result.instance,
        log_signature=result.log_signature,
        log_file_size=result.log_file_size,
        page_size=result.page_size,
        generation_low=result.generation_low,
        generation_high=result.generation_high,
        logs=LOGS_INCLUDED,
        logs_note=(
            f"log generations {result.generation_low}-{result.generation_high}, every one "
            "verified frame by frame and against its successor while copied"
        ),
        images=[
            ManifestImage(
                name=image.name,
                db_id=image.db_id,
                signature=image.signature,
                log_signature=result.log_signature,
                page_size=image.page_size,
                page_count=image.page_count,
                checkpoint=image.checkpoint,
                generation_min_required=image.generation_min_required,
                clean=False,
            )
            for image in result.images
        ],
        files=[],
        databases=list(result.databases),
        engine_version=result.engine_version,
        format_version=result.format_version,
        started_us=result.started_us,
        completed_us=result.completed_us or now_us(),
        compression="zstd" if compress else "none",
        path=path,
    )
