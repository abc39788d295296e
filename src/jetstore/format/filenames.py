"""Every file name jetstore uses, formatted and parsed in one place.

Log generations are written as 8 uppercase hex digits (`edb0000002A.log`), the current log is
always `edb.log`, and the next log is prepared ahead of use as `edbtmp.log`. Nothing else in
the engine builds or parses these names.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from jetstore.format.common import format_time_us

BASE_NAME = "edb"
CURRENT_LOG = f"{BASE_NAME}.log"
TEMP_LOG = f"{BASE_NAME}tmp.log"
CHECKPOINT_FILE = f"{BASE_NAME}.chk"
LOCK_FILE = "jetstore.lock"
EVENT_LOG = "events.jsonl"
#: The event log's previous file: `events.jsonl` is renamed to it when it reaches its size.
EVENT_LOG_PREVIOUS = "events.1.jsonl"
CONTROL_SOCKET = "jetstore.sock"  # the open instance's control socket (jetstore.control)
DATABASE_SUFFIX = ".edb"
#: Where recovery with data loss (and repair) set an instance's logs aside: `lost-logs-<time>/`.
LOST_LOGS_PREFIX = "lost-logs-"
#: Inside `lost-logs-<time>/`: the loss a recovery accepted, written before it changes any file
#: (`data-loss.pending.json`), renamed to `data-loss.json` once every log is moved there.
DATA_LOSS_PENDING = "data-loss.pending.json"
DATA_LOSS_RECORD = "data-loss.json"
RESERVE_LOG_COUNT = 2

MAX_GENERATION = 0xFFFFFFFF
_GENERATION_RE = re.compile(r"edb([0-9A-F]{8})\.log")
#: What a log file name looks like to an operator: any case, any count of hex digits.
_LOG_LIKE_RE = re.compile(r"edb([0-9A-F]*)\.log", re.IGNORECASE)
_RESERVE_RE = re.compile(r"edbres([0-9]{5})\.jrs")
_DATABASE_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_\-]{0,63})\.edb")
_DATABASE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")


def generation_log_name(generation: int) -> str:
    """Name of a closed generation: `edb` + 8 uppercase hex digits + `.log`."""
    if not 0 < generation <= MAX_GENERATION:
        raise ValueError(f"log generation out of range: {generation}")
    return f"{BASE_NAME}{generation:08X}.log"


def parse_generation_log_name(name: str) -> int | None:
    """The generation of a closed-generation file name, or None if `name` is not one."""
    match = _GENERATION_RE.fullmatch(name)
    generation = int(match.group(1), 16) if match else 0
    return generation if generation > 0 else None


def misnamed_log_name(name: str) -> str | None:
    """The name the engine reads for a file named `name` that looks like a log file but is
    not named as one (`edb0000000a.log`, `EDB00000003.LOG`, `edb3.log`, `EDB.LOG`): the
    generation its hex digits say, as `generation_log_name` spells it, or `edb.log`. None
    for a right name, and for one that is no log name (nor a generation in range). Such a
    file is never read as a log; this names it for the operator."""
    if name == CURRENT_LOG or parse_generation_log_name(name) is not None:
        return None
    match = _LOG_LIKE_RE.fullmatch(name)
    if match is None:
        return None
    digits = match.group(1)
    if not digits:
        return CURRENT_LOG
    generation = int(digits, 16)
    return generation_log_name(generation) if 0 < generation <= MAX_GENERATION else None


def reserve_log_name(index: int) -> str:
    return f"{BASE_NAME}res{index:05d}.jrs"


def parse_reserve_log_name(name: str) -> int | None:
    match = _RESERVE_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def database_file_name(name: str) -> str:
    return f"{name}{DATABASE_SUFFIX}"


def parse_database_file_name(file_name: str) -> str | None:
    match = _DATABASE_RE.fullmatch(file_name)
    return match.group(1) if match else None


def is_valid_database_name(name: str) -> bool:
    return _DATABASE_NAME_RE.fullmatch(name) is not None


def unused_time_stamp(time_us: int, taken: Callable[[str], bool]) -> str:
    """The time that names a `lost-logs-<stamp>/` (and a repair's kept file): `time_us` to
    the second, with `-2`, `-3`, ... appended while `taken(stamp)` says a name built from it
    exists. Two set-asides within one second would otherwise share one directory, the
    second renaming its logs over the first's (every stream starts at generation 1)."""
    base = format_time_us(time_us).replace(":", "").replace("-", "")
    stamp, number = base, 1
    while taken(stamp):
        number += 1
        stamp = f"{base}-{number}"
    return stamp
