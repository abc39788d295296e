"""Offline backup: a backup set taken from an instance directory no process has open.

`backup_offline(instance_dir, dest)` holds the instance's directory lock
(`jetstore.io.locking`) from the first check to the last byte, so nobody opens the instance
meanwhile (an instance that is open is refused with the lock's error naming the holder's
pid). Every database must be in clean shutdown state; `recover=True` first opens and closes
the instance (soft recovery leaves every database clean). That open also finishes a data
loss an earlier recovery accepted but did not finish setting aside (design D6): the loss it
reports goes to `on_data_loss`, so that the command that asked for the backup says it.
Without `recover`, such a pending loss is refused (`DatabaseDirtyShutdown`) even when every
database is clean already: the set would not say that data was lost.
Each database is then copied as an image (`jetstore.backup.image.DatabaseImage`) at its
clean header, verified page by page as the online path does, into the same backup set form
(`jetstore.backup.backupset`), kind "full", `"offline": true`.

Why an offline set holds no log file (`"logs": "none"` in the manifest, with the reason in
`logs_note`): a clean image needs none — its header requires no generation
(`generation_min_required` 0) and restore opens it as is, like any cleanly shut down database.
The only generation at or after the images' consistent point is the current `edb.log`, which
no closed successor vouches for (the online path verifies each copied generation against the
header of the next one), and every older generation lies entirely before that point, so
replay would skip all of it. Copying them would add bytes that no restore reads and that
could not be verified the way the online path verifies its logs.

Invariants:
- The lock is taken before the first header is read and released after the set is durable
  (or the attempt failed); nothing in the instance directory is written except the lock file
  (removed again when the directory had none).
  The set's `started_us` is taken under it: the images hold no commit later than it.
- No backup history is recorded in the headers and no log is deleted: an offline backup is a
  copy of the files, outside the log stream's sequence (a later incremental backup still needs
  an online full backup before it).
- Every handle (the lock, the sources, the destination) is opened under one owner and released
  with one `close_owner` call on every way out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jetstore
from jetstore.backup.backupset import (
    LOGS_NONE,
    Manifest,
    ManifestImage,
    Progress,
    SetWriter,
)
from jetstore.backup.image import DatabaseImage
from jetstore.backup.session import BackupFile, BackupKind
from jetstore.errors import DatabaseDirtyShutdown, JetError
from jetstore.format.common import (
    ENGINE_VERSION,
    FORMAT_VERSION,
    PAGE_SIZES,
    Signature,
    now_us,
)
from jetstore.format.dbheader import (
    HEADER_COPIES,
    PEEK_SIZE,
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    peek_page_size,
)
from jetstore.format.filenames import LOCK_FILE, database_file_name, parse_database_file_name
from jetstore.instance.instance import InstanceOptions
from jetstore.instance.recovery import DataLoss
from jetstore.instance.recoverydecisions import read_pending_data_loss
from jetstore.io.files import File, FileSystem
from jetstore.io.handles import use_owner
from jetstore.io.locking import acquire_directory_lock
from jetstore.log.reader import take_inventory

__all__ = ["backup_offline"]

LOGS_NOTE = (
    "offline backup of a cleanly shut down instance: the images are clean and need no log "
    "file to be restored; the current generation has no closed successor to verify it against "
    "and every older one lies before the images' consistent point, so none is copied"
)


def backup_offline(
    instance_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    recover: bool = False,
    compress: bool = False,
    progress: Progress | None = None,
    filesystem: FileSystem | None = None,
    on_data_loss: Callable[[DataLoss], None] | None = None,
) -> Manifest:
    """Write a full backup set of the stopped instance in `instance_dir` to `dest`.

    `dest` must not exist or be an empty directory. Raises the directory lock's error
    (`FileAccessDenied`, naming the holder's pid) when the instance is open, and
    `DatabaseDirtyShutdown` naming the database when one is not cleanly shut down (unless
    `recover`, which runs soft recovery first by opening and closing the instance), or
    when a data loss an earlier recovery accepted is not finished (its pending record). A
    data loss that recovery reports (it finished a pending one) is handed to `on_data_loss`
    before the backup is taken (and is event 113 either way).
    """
    fs = filesystem if filesystem is not None else FileSystem()
    directory = os.path.abspath(os.fspath(instance_dir))
    fs.require_directory(
        directory,
        what="instance directory",
        hint="give the directory that holds the instance's edb.log, edb.chk and .edb files",
    )
    if recover:
        loss = _soft_recovery(fs, directory)
        if loss is not None and on_data_loss is not None:
            on_data_loss(loss)
    owner = use_owner(f"offline-backup:{directory}")
    writer: SetWriter | None = None
    lock_path = os.path.join(directory, LOCK_FILE)
    # Database files on their own (a folder that is no instance yet) have no lock file: the
    # one the backup creates is removed again, the folder left as it was found.
    created = not fs.exists(lock_path)
    try:
        lock = acquire_directory_lock(fs, directory, owner=owner, holder="an offline backup")
        try:
            # Under the lock: the set's start is when its images hold no later commit (a
            # restore's time stop at or after it reads no log). Taken before, an instance
            # that committed and closed meanwhile had a commit in the images after it.
            started = now_us()
            _refuse_pending_data_loss(fs, directory, owner=owner)
            sources = _clean_databases(fs, directory, owner=owner)
            images = [
                (name, header, DatabaseImage(file, header, path=file.path))
                for name, header, file in sources
            ]
            writer = SetWriter(fs, dest, owner=owner, compress=compress, progress=progress)
            writer.prepare()
            writer.announce(sum(image.size for _name, _header, image in images))
            for name, _header, image in images:
                writer.add(
                    BackupFile(database_file_name(name), "database", image.size, database=name),
                    image.chunks(),
                )
            manifest = writer.publish(
                _manifest(directory, images, started=started, compress=compress, fs=fs)
            )
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        finally:
            if created:
                lock.release_removing_file(fs)
            else:
                lock.release()
    finally:
        fs.registry.close_owner(owner)
    return manifest


def _soft_recovery(fs: FileSystem, directory: str) -> DataLoss | None:
    """Open and close the instance: recovery replays the logs, close leaves it clean. The
    data loss the open finished, if any."""
    instance = jetstore.open(directory, filesystem=fs, **_open_options(fs, directory))
    loss = instance.recovery.data_loss if instance.recovery is not None else None
    instance.close()
    return loss


def _open_options(fs: FileSystem, directory: str) -> dict[str, Any]:
    """The options the instance was created with (the newest log says), circular logging
    off so that opening it for recovery never deletes a log file."""
    options: dict[str, Any] = {"circular_logging": False}
    if "control_socket" in {f.name for f in dataclasses.fields(InstanceOptions)}:
        options["control_socket"] = False  # opened for recovery only: nobody to serve
    try:
        inventory = take_inventory(fs, directory, owner=f"offline-backup:{directory}")
    except JetError:
        return options
    if inventory.highest is not None:
        header = inventory.files[inventory.highest].header
        if header is not None:
            options.update(log_file_size=header.log_file_size, page_size=header.page_size)
    return options


def _refuse_pending_data_loss(fs: FileSystem, directory: str, *, owner: str) -> None:
    """Refuse an instance whose accepted data loss is not finished (design D6).

    Its databases may all be clean already, rewritten at the last consistent point with no
    log stream, while the old logs wait to be set aside: copied as they are, the set said
    nothing of the loss (only the record in the instance directory does, until an open
    finishes it) and took the stream the loss ended for its own. Refused rather than
    finished here: finishing is recovery's work, and `--recover` does it with the loss
    reported.
    """
    pending = read_pending_data_loss(fs, directory, owner)
    if pending is None:
        return
    raise DatabaseDirtyShutdown(
        f"instance '{directory}' has a data loss that recovery accepted but did not finish "
        f"setting aside ('{pending.path}'): an offline backup copies finished, clean "
        "instances only",
        hint="run `jetstore backup DIR --to DEST --recover` (its soft recovery finishes it and "
        "reports the loss), or `jetstore recover DIR` and then the backup",
        path=pending.path,
    )


def _clean_databases(
    fs: FileSystem, directory: str, *, owner: str
) -> list[tuple[str, DatabaseHeader, File]]:
    """Every database of `directory` with its clean header and a read-only handle."""
    found: list[tuple[str, DatabaseHeader, File]] = []
    for file_name in fs.listdir(directory):
        name = parse_database_file_name(file_name)
        if name is None:
            continue
        path = os.path.join(directory, file_name)
        file = fs.open(path, owner=owner, writable=False)
        header = _read_header(file, path)
        if header.state is not DatabaseState.CLEAN:
            raise DatabaseDirtyShutdown(
                f"database {name!r} ('{path}') was not shut down cleanly (state "
                f"{header.state.name}): an offline backup copies clean databases only",
                hint="run `jetstore backup DIR --to DEST --recover` (soft recovery first), or "
                "`jetstore recover DIR` and then the backup",
                path=path,
            )
        found.append((name, header, file))
    return found


def _read_header(file: File, path: str) -> DatabaseHeader:
    page_size = peek_page_size(file.pread(PEEK_SIZE, 0))
    if page_size is None:
        # Copy 0 cannot say its page size: copy 1 starts one page in, so the size at which
        # a header starts there is the page size (as `dump header` and open find it). Else
        # copy 1 was read from inside copy 0 and a database whose copy 1 is intact refused.
        page_size = next(
            (
                size
                for size in sorted(PAGE_SIZES)
                if peek_page_size(file.pread(PEEK_SIZE, size)) == size
            ),
            # Neither copy says: let the header decoder say what is wrong with both.
            PEEK_SIZE,
        )
    data = file.pread(page_size * HEADER_COPIES, 0)
    header, _problems = choose_db_header(
        data[:page_size], data[page_size : 2 * page_size], path=path
    )
    return header


def _manifest(
    directory: str,
    images: list[tuple[str, DatabaseHeader, DatabaseImage]],
    *,
    started: int,
    compress: bool,
    fs: FileSystem,
) -> Manifest:
    signatures = [header.log_signature for _name, header, _image in images]
    log_signature = _current_log_signature(fs, directory)
    if log_signature is None:
        log_signature = signatures[0] if signatures else Signature.NONE
    options = _open_options(fs, directory)
    page_sizes = {header.page_size for _name, header, _image in images}
    return Manifest(
        kind=BackupKind.FULL,
        offline=True,
        session=None,
        source=directory,
        log_signature=log_signature,
        log_file_size=int(options.get("log_file_size", 0)),
        page_size=int(options.get("page_size", min(page_sizes, default=0))),
        generation_low=0,
        generation_high=0,
        logs=LOGS_NONE,
        logs_note=LOGS_NOTE,
        images=[
            ManifestImage(
                name=name,
                db_id=header.db_id,
                signature=header.db_signature,
                log_signature=header.log_signature,
                page_size=header.page_size,
                page_count=header.page_count,
                checkpoint=header.checkpoint_position,
                generation_min_required=header.generation_min_required,
                clean=True,
            )
            for name, header, _image in images
        ],
        files=[],
        databases=[name for name, _header, _image in images],
        engine_version=ENGINE_VERSION,
        format_version=FORMAT_VERSION,
        started_us=started,
        completed_us=now_us(),
        compression="zstd" if compress else "none",
    )


def _current_log_signature(fs: FileSystem, directory: str) -> Signature | None:
    try:
        inventory = take_inventory(fs, directory, owner=f"offline-backup:{directory}")
    except JetError:
        return None
    if inventory.highest is None:
        return None
    header = inventory.files[inventory.highest].header
    return None if header is None else header.log_signature
