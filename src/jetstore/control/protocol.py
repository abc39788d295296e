"""The control socket's wire format: request and reply lines, backup frames, error objects.

This module owns the protocol only (no sockets, no threads); the server
(`jetstore.control.server`) and the client (`jetstore.control.client`) both build and parse
their bytes here, so the two sides cannot drift apart. `docs/design.md`, section "Control
socket", is the prose version.

- A request is one JSON object on one line (UTF-8, ending in ``\\n``), at most
  `MAX_REQUEST` bytes with its newline: ``{"op": "ping"}``.
- A reply is one JSON object on one line: ``{"ok": true, "op": ..., ...}`` or
  ``{"ok": false, "op": ..., "error": {"name", "code", "message", ...}}``.
- During a backup, each file's contents follow its description line as frames: a 4-byte
  big-endian length, then that many bytes. Length 0 ends the file; `FRAME_ERROR` (0xFFFFFFFF)
  says the file was cut short and an error reply line follows.

Invariants:
- Every error that crosses the wire is a `JetError` turned into `error_object` and back into
  the same class (by code) with `error_from_object`; the message keeps the path and the hint.
- `encode_line` never produces a line with a raw newline inside (JSON escapes it), so a line
  reader can split on ``\\n`` alone.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import socket
import struct
from typing import Any, Final

from jetstore.errors import InvalidParameter, JetError, error_class
from jetstore.format.common import Signature
from jetstore.format.positions import LogPosition

#: Protocol version, sent in the reply to ``ping`` (a client may check it).
PROTOCOL_VERSION: Final = 1
#: Largest request line accepted, newline included; a longer one gets an error and the
#: connection is closed (the server cannot know where the next request starts).
MAX_REQUEST: Final = 64 * 1024
#: Largest reply line a client accepts (counters and events replies are far smaller).
MAX_REPLY: Final = 64 * 1024 * 1024
FRAME_HEADER: Final = struct.Struct(">I")
#: Largest frame (the backup session's chunk): a reader checks a length before it buffers
#: that many bytes.
MAX_FRAME: Final = 1024 * 1024
#: Frame length meaning "this file was cut short; an error reply line follows".
FRAME_ERROR: Final = 0xFFFFFFFF
#: Flags of every send on a control connection, server and client: a peer that hung up is
#: EPIPE, never SIGPIPE (an application may run with SIGPIPE's default action, death).
SEND_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0)
#: Requests a connection may send outside a backup. They have no side effects, so a client
#: may send one again on a new connection (after the server's idle close).
SIMPLE_OPS: Final = ("ping", "counters", "events")
#: Every op of the protocol (``complete`` and ``abort`` only inside a backup).
ALL_OPS: Final = (*SIMPLE_OPS, "backup", "complete", "abort")


#: Characters of a client's value an error message or event quotes (`quote`, `clip`).
QUOTE_LIMIT: Final = 60


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to `limit` characters, saying how long it was: what a client sent is
    quoted briefly whatever it sent. Quoted whole, one 64 KiB request was a 384 KiB line of
    events.jsonl (every character JSON-escaped, in the message and a field), and the
    events an instance keeps made an ``events`` reply longer than any client accepts."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut as `clip` cuts."""
    return clip(repr(value), limit)


def encode_line(message: dict[str, Any]) -> bytes:
    """One JSON line (compact, UTF-8, newline-terminated)."""
    return (json.dumps(to_jsonable(message), separators=(",", ":")) + "\n").encode()


def decode_request(line: bytes) -> dict[str, Any]:
    """Parse a request line (without its newline). InvalidParameter naming what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameter(
            f"request is not UTF-8 (byte {exc.start})",
            hint='send one JSON object per line, e.g. {"op": "ping"}',
        ) from None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # json recurses once per nesting level: a line of "[[[[..." within MAX_REQUEST is a
        # RecursionError, which must cost this request only, like any other bad JSON.
        raise InvalidParameter(
            f"request is not valid JSON: {_json_failure(exc)}",
            hint='send one JSON object per line, e.g. {"op": "ping"}',
        ) from None
    if not isinstance(message, dict):
        raise InvalidParameter(
            f"request must be a JSON object, got {type(message).__name__}",
            hint='send one JSON object per line, e.g. {"op": "ping"}',
        )
    op = message.get("op")
    if not isinstance(op, str):
        raise InvalidParameter('request has no "op" string', hint=f"ops: {', '.join(ALL_OPS)}")
    return message


def decode_reply(line: bytes, *, source: str) -> dict[str, Any]:
    """Parse a reply line from the server at `source` (InvalidParameter if it is not one)."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise InvalidParameter(
            f"the control socket '{source}' sent a line that is not JSON: {_json_failure(exc)}",
            hint="the socket is not a jetstore control socket, or the server is a "
            "different version",
            path=source,
        ) from None
    if not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
        raise InvalidParameter(
            f"the control socket '{source}' sent a reply without an ok field",
            hint="the socket is not a jetstore control socket",
            path=source,
        )
    return message


def _json_failure(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, RecursionError):
        return "arrays or objects nested too deeply"
    return str(exc)


def error_object(error: JetError) -> dict[str, Any]:
    """The ``error`` member of a failed reply."""
    return {
        "name": error.name,
        "code": error.code,
        "message": str(error),
        "detail": error.detail,
        "hint": error.hint,
        "path": error.path,
    }


def error_reply(error: JetError, op: object = None) -> dict[str, Any]:
    return {"ok": False, "op": op if isinstance(op, str) else None, "error": error_object(error)}


def error_from_object(obj: object, *, source: str) -> JetError:
    """The `JetError` a failed reply carries: the class of its code, with its detail, path and
    hint (an unknown code becomes `InvalidParameter` quoting the message)."""
    if not isinstance(obj, dict):
        return InvalidParameter(f"the control socket '{source}' failed without saying why")
    code = obj.get("code")
    cls = error_class(code) if isinstance(code, int) else None
    detail = obj.get("detail")
    hint = obj.get("hint")
    path = obj.get("path")
    if cls is None:
        return InvalidParameter(
            f"the control socket '{source}' answered with error {obj.get('message')!r}",
            path=source,
        )
    error = cls(
        str(detail) if isinstance(detail, str) else str(obj.get("message", "")),
        hint=hint if isinstance(hint, str) else None,
        path=path if isinstance(path, str) else None,
    )
    return error


def frame_header(length: int) -> bytes:
    return FRAME_HEADER.pack(length)


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON data (dicts, lists, strings, numbers), as the wire carries it.

    Engine value types are spelled out before any generic rule: a `LogPosition` is a named
    tuple, which `json` alone would turn into a bare list."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, LogPosition):
        return {"generation": value.generation, "offset": value.offset, "text": str(value)}
    if isinstance(value, Signature):
        return {"random": value.random.hex(), "time_us": value.time_us}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


__all__ = [
    "ALL_OPS",
    "FRAME_ERROR",
    "FRAME_HEADER",
    "MAX_FRAME",
    "MAX_REPLY",
    "MAX_REQUEST",
    "PROTOCOL_VERSION",
    "QUOTE_LIMIT",
    "SEND_FLAGS",
    "SIMPLE_OPS",
    "clip",
    "decode_reply",
    "decode_request",
    "encode_line",
    "error_from_object",
    "error_object",
    "error_reply",
    "frame_header",
    "quote",
    "to_jsonable",
]
