"""The event log: what the engine did and why, for operators (ESE's application event log).

Events are JSON lines in `events.jsonl` in the instance directory, one object per line:
`{"time": "...Z", "time_us": int, "id": int, "level": "info|warning|error", "name": "...",
"instance": "<directory>", "message": "...", "fields": {...}}`; an event about an error carries
its code in the three forms an admin meets (`fields.code_forms`). Python `logging` records go
to the `jetstore.events` logger with `event_id`, `event_name` and `instance` attributes.

The `logging` records are not handed to the handlers by the thread that emits the event: that
thread may hold engine locks (the commit lock, a checkpoint's), and a handler that closes the
instance on `instance_failed` deadlocked there, one that was slow held every commit. They are
queued, in the order the events were written, and delivered by the event log's own thread
(`jetstore-events`), which holds no engine lock; a handler that raises is ignored (the next
record is delivered all the same). `close` delivers every record still queued before it
returns (the instance closes the event log last, so its final events are among them).

Event ids are stable (table `EVENTS` below, `docs/events.md`); a monitoring script may match on
them. The most recent events are also kept in memory for `counters` and the control socket.
Writing an event never raises: the event log is diagnostics, and a full disk must not turn a
warning into a failure.

The log is bounded: once `events.jsonl` holds `max_bytes` (the instance option
`event_log_size`), it is renamed `events.1.jsonl` (replacing the one before) and a new
`events.jsonl` begins, so an instance that runs for years keeps at most about twice that on
disk, the newest events always included. `read_event_log` reads both files, oldest first.
Lines are written whole with one `pwrite` each but never synced: a power loss can leave the
file ending in a partial line or in NUL bytes, so an open that finds the file not ending in a
newline starts its first line on a new one (that event is not glued to the damaged tail,
which readers skip).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from typing import Any, Final

from jetstore.errors import FileNotFound, JetError, OutOfThreads
from jetstore.format.common import format_time_us, now_us
from jetstore.format.filenames import EVENT_LOG, EVENT_LOG_PREVIOUS
from jetstore.io.files import File, FileSystem
from jetstore.io.threads import ManagedThread

_logger = logging.getLogger("jetstore.events")
_LEVELS: Final = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# id: (name, level)
EVENTS: Final[dict[int, tuple[str, str]]] = {
    100: ("instance_started", "info"),
    101: ("instance_stopped", "info"),
    102: ("instance_failed", "error"),
    103: ("instance_not_closed", "warning"),
    110: ("recovery_started", "info"),
    111: ("recovery_finished", "info"),
    112: ("recovery_checkpoint_file_ignored", "warning"),
    113: ("recovery_data_loss", "error"),
    114: ("recovery_generation_replayed", "info"),
    115: ("recovery_database_detached", "info"),
    116: ("restore_database_not_restored", "warning"),
    120: ("checkpoint_written", "info"),
    121: ("checkpoint_file_write_failed", "warning"),
    122: ("checkpoint_file_write_recovered", "info"),
    123: ("checkpoint_depth_warning", "warning"),
    130: ("database_created", "info"),
    131: ("database_attached", "info"),
    132: ("database_header_repaired", "warning"),
    133: ("database_detached", "info"),
    134: ("database_renumbered", "warning"),
    135: ("database_missing", "warning"),
    140: ("log_generation_started", "info"),
    141: ("logs_deleted", "info"),
    142: ("log_delete_failed", "warning"),
    143: ("log_disk_full", "error"),
    144: ("log_disk_low", "warning"),
    150: ("backup_started", "info"),
    151: ("backup_completed", "info"),
    152: ("backup_aborted", "warning"),
    153: ("backup_failed", "error"),
    154: ("backup_not_ended", "warning"),
    160: ("control_socket_started", "info"),
    161: ("control_request_rejected", "warning"),
    162: ("control_socket_failed", "error"),
}
_BY_NAME: Final = {name: (event_id, level) for event_id, (name, level) in EVENTS.items()}


#: Default size at which `events.jsonl` is renamed `events.1.jsonl` (instance option
#: `event_log_size`): about 18,000 events of ~450 bytes.
DEFAULT_EVENT_LOG_SIZE: Final = 8 * 1024 * 1024


class EventLog:
    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        owner: str,
        keep: int = 200,
        max_bytes: int = DEFAULT_EVENT_LOG_SIZE,
    ) -> None:
        self._fs = fs
        self._path = os.path.join(directory, EVENT_LOG)
        self._previous_path = os.path.join(directory, EVENT_LOG_PREVIOUS)
        self._directory = directory
        self._owner = owner
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._file: File | None = None
        self._offset = 0
        self._start_line = False  # the file ends inside a line: begin the next one anew
        # `logging` records waiting for the delivery thread, in event order (guarded by
        # `_lock`, appended with the line that is written, so both orders agree), the event
        # log's own warnings (a line it could not write) among them.
        self._undelivered: deque[logging.LogRecord] = deque()
        self._delivery_wake = threading.Event()
        # Set (under `_lock`) once the delivery thread delivers no more: later records are
        # delivered by the thread that emits them (nothing is left queued for nobody).
        self._delivery_done = False
        # Plain `open`: opened once, while the instance opens, under the instance's owner;
        # an interrupt here fails that open, whose cleanup closes the owner at once.
        self._open_file()
        self._delivery: ManagedThread | None = None
        self._delivery_wake.set()  # `_open_file` may have queued a warning
        try:
            self._delivery = ManagedThread(
                fs.registry,
                owner,
                "jetstore-events",
                self._deliver_loop,
                wake=self._delivery_wake.set,
            )
        except OutOfThreads as exc:
            # Events are diagnostics: without a thread, the emitting thread delivers.
            self._delivery_done = True
            self._warn("no thread for the event log %s: %s", exc)
            self._deliver_queued()

    def _warn(self, text: str, exc: JetError | OutOfThreads) -> None:
        """Queue a warning of the event log about itself (`text` with its path and `exc`),
        delivered as the events are: it is met inside `emit`, which holds `_lock` and may run
        under the engine's locks, so a handler called there could not even read the recent
        events. Called with `_lock` held or before the log is shared."""
        if _logger.isEnabledFor(logging.WARNING):
            path, line, function, _stack = _logger.findCaller()
            self._undelivered.append(
                _logger.makeRecord(
                    _logger.name,
                    logging.WARNING,
                    path,
                    line,
                    text,
                    (self._path, exc),
                    None,
                    function,
                )
            )

    def _open_file(self) -> None:
        """Open (or create) `events.jsonl` for appending. Called with `_lock` held or before
        the log is shared."""
        try:
            file = self._fs.open(self._path, owner=self._owner, create=True)
        except JetError as exc:
            self._warn("cannot open the event log %s: %s", exc)
            return
        try:
            offset = file.size()
            start_line = offset > 0 and file.pread(1, offset - 1) != b"\n"
        except JetError as exc:
            # Where the file ends is unknown: writing at a guess could overwrite events.
            self._warn("cannot read the end of the event log %s: %s", exc)
            file.close()
            return
        self._file, self._offset, self._start_line = file, offset, start_line

    def _rotate(self) -> None:
        """`events.jsonl` is full: it becomes `events.1.jsonl` and a new one begins. Called
        with `_lock` held. A failure leaves events in memory only (and says so in `logging`),
        never raises."""
        file, self._file = self._file, None
        if file is not None:
            file.close()
        try:
            self._fs.rename(self._path, self._previous_path)
        except JetError as exc:
            # Not renamed: appending on would grow the file without bound; try again at the
            # next event instead (a rename that fails once, say an EBUSY, may work later).
            self._warn("cannot rotate the event log %s: %s", exc)
        self._open_file()

    @property
    def path(self) -> str:
        return self._path

    def emit(self, name: str, message: str, **fields: Any) -> dict[str, Any]:
        event_id, level = _BY_NAME[name]
        time_us = now_us()
        clean = {k: _jsonable(v) for k, v in fields.items()}
        code = clean.get("code")
        if isinstance(code, int) and code < 0:
            # An admin may meet the number in any of its three forms (-1811, 4294965485,
            # 0xfffff8ed): the event carries all of them.
            clean["code_forms"] = [code, code & 0xFFFFFFFF, f"0x{code & 0xFFFFFFFF:08x}"]
        event = {
            "time": format_time_us(time_us),
            "time_us": time_us,
            "id": event_id,
            "level": level,
            "name": name,
            "instance": self._directory,
            "message": message,
            "fields": clean,
        }
        line = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
        record = self._record(event_id, name, level, message)
        with self._lock:
            if record is not None:
                self._undelivered.append(record)
            self._recent.append(event)
            if (
                self._file is not None
                and self._offset
                and self._offset + len(line) > (self._max_bytes)
            ):
                self._rotate()
            if self._file is not None:
                if self._start_line:
                    line = b"\n" + line
                try:
                    self._file.pwrite(line, self._offset)
                    self._offset += len(line)
                    self._start_line = False
                except JetError as exc:
                    self._warn("cannot write the event log %s: %s", exc)
            queued = bool(self._undelivered)
            deliver_here = self._delivery_done
        if queued:
            if deliver_here:
                self._deliver_queued()
            else:
                self._delivery_wake.set()
        return event

    def _record(
        self, event_id: int, name: str, level: str, message: str
    ) -> logging.LogRecord | None:
        """The `logging` record of an event (None when the logger would drop it), made now:
        it carries the event's time and the emitting thread, not the delivery's."""
        levelno = _LEVELS[level]
        if not _logger.isEnabledFor(levelno):
            return None
        path, line, function, _stack = _logger.findCaller()
        record = _logger.makeRecord(
            _logger.name,
            levelno,
            path,
            line,
            "%s: %s",
            (name, message),
            None,
            function,
            extra={"event_id": event_id, "event_name": name, "instance": self._directory},
        )
        return record

    def _deliver_loop(self, stop: threading.Event) -> None:
        """The delivery thread: hands the queued records to the `logging` handlers, oldest
        first, holding no engine lock; once stopped, it ends only when none is left."""
        while True:
            if not stop.is_set():
                self._delivery_wake.wait()
                self._delivery_wake.clear()
            self._deliver_queued()
            if stop.is_set():
                with self._lock:
                    if not self._undelivered:
                        self._delivery_done = True
                        return

    def _deliver_queued(self) -> None:
        """Hand every queued record to the handlers, oldest first, with no lock held."""
        while True:
            with self._lock:
                if not self._undelivered:
                    return
                record = self._undelivered.popleft()
            _deliver(record)

    def on_delivery_thread(self) -> bool:
        """True in the thread that runs the `logging` handlers (a handler's own call)."""
        delivery = self._delivery
        return delivery is not None and delivery.is_current

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._recent)[-limit:]

    def close(self) -> None:
        """Deliver every queued `logging` record (the delivery thread is joined, unless this
        is it: a handler that closed the instance, whose thread delivers the rest once the
        handler returns), then close the file."""
        delivery = self._delivery
        try:
            if delivery is not None:
                # Still named while it is joined: a handler's `Instance.close` asks whether it
                # runs on it (and must not wait for the close that joins it).
                delivery.close()
        finally:
            with self._lock:
                if self._file is not None:
                    self._file.close()
                    self._file = None


def _deliver(record: logging.LogRecord) -> None:
    """One record to the handlers of `jetstore.events` and its parents. A handler that raises
    (logging lets a handler's own exception through `Logger.handle`) loses its record, not
    the ones after it, and never reaches the engine."""
    try:
        _logger.handle(record)
    except BaseException:
        pass  # the handler's failure is the application's to see, in its own handler


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_log_paths(directory: str) -> tuple[str, str]:
    """The event log's previous file and its current one, in the order they were written."""
    return os.path.join(directory, EVENT_LOG_PREVIOUS), os.path.join(directory, EVENT_LOG)


def read_event_log(fs: FileSystem, directory: str) -> list[dict[str, Any]]:
    """Every parseable event of the instance in `directory`, oldest first: the previous file
    (`events.1.jsonl`), then the current one."""
    events: list[dict[str, Any]] = []
    for path in event_log_paths(directory):
        events.extend(read_events(fs, path))
    return events


def read_events(fs: FileSystem, path: str) -> list[dict[str, Any]]:
    """Every parseable event of an event log file (damaged lines are skipped); none when
    there is no such file. A file that cannot be read raises its error: "no events" would
    hide the log from the operator who needs it."""
    try:
        data = fs.read_file(path, owner="event-reader")
    except FileNotFound:
        return []
    events: list[dict[str, Any]] = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            # NaN and Infinity are no JSON: a line holding them is damaged (kept, they made
            # `jetstore events --json` print a document strict parsers refuse)
            event = json.loads(line, parse_constant=_no_constant)
        except ValueError:
            continue
        if _is_event(event):
            events.append(event)
    return events


#: The fields every event is written with, and their types (`fields` and `instance` are
#: left out: nothing shows or filters by them).
_EVENT_FIELDS: Final = {
    "time": str,
    "time_us": int,
    "id": int,
    "level": str,
    "name": str,
    "message": str,
}


def _is_event(value: Any) -> bool:
    """True if `value` is an event object as `EventLog.emit` writes it. `42` or `[...]` parse
    but are no event, and neither is an object without the event fields (`{}`, a line of
    another tool's log): kept, it was shown as a blank row, as if an event said nothing."""
    if not isinstance(value, dict):
        return False
    for key, kind in _EVENT_FIELDS.items():
        field_value = value.get(key)
        if not isinstance(field_value, kind) or isinstance(field_value, bool):
            return False
    return value["level"] in ("info", "warning", "error")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
