"""The text forms of column values in exported files (JSON lines and CSV), both ways.

This module owns the mapping between column values and what `jetstore export` writes and
`jetstore import` reads, per column type:

| type | JSON lines | CSV |
| --- | --- | --- |
| int | number | decimal |
| float | number; `"nan"`, `"inf"`, `"-inf"` as strings | `repr` (`nan`, `inf`, `-inf`) |
| bool | `true` / `false` | `true` / `false` (import also takes `1` / `0`) |
| text | string | the text; one more leading `\\` when it starts with `\\` |
| bytes | base64 string | base64 |
| datetime | ISO 8601 string (`2026-01-02T03:04:05.000006`, aware ones with `+00:00`) | same |
| NULL | `null` | `\\N` |

A CSV number is read in these forms only: ASCII digits with an optional sign, for a float a
fraction and exponent too, and exactly `nan`, `inf`, `-inf` for the values that are not finite
(as in JSON). Python's `int()` and `float()` also take `1_000`, digits of other scripts,
`Infinity`, `NaN` and `+inf`: refused, as a typo or another tool's format would otherwise be
stored as a number. A number beyond the float range (`1e400`) is refused in both formats
rather than stored as inf, and so are the `NaN` and `Infinity` tokens Python's `json` reads.

Invariants: `from_json(t, to_json(t, v)) == v` and `from_csv(t, to_csv(t, v)) == v` for every
value `v` a column of type `t` holds (aware datetimes come back as the same instant in UTC,
as the engine returns them); a malformed input raises `ValueError` with what was expected.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import datetime
from typing import Final

from jetstore.tables.schema import ColumnType

__all__ = ["CSV_NULL", "from_csv", "from_json", "json_float", "to_csv", "to_json"]

CSV_NULL: Final = "\\N"
_SPECIAL_FLOATS: Final = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# The forms export writes (see above), not the wider grammar of int() and float().
_INT_TEXT: Final = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def json_float(value: float) -> float | str:
    """`value` as strict JSON holds it: a non-finite float as `"nan"`, `"inf"` or `"-inf"`
    (JSON has no NaN or Infinity; `json` would write those non-standard tokens)."""
    return value if math.isfinite(value) else repr(value)


def to_json(ctype: ColumnType, value: object) -> object:
    """The JSON value of a column value."""
    if value is None:
        return None
    if ctype is ColumnType.FLOAT:
        assert isinstance(value, float)
        return json_float(value)
    if ctype is ColumnType.BYTES:
        assert isinstance(value, bytes)
        return base64.b64encode(value).decode("ascii")
    if ctype is ColumnType.DATETIME:
        assert isinstance(value, datetime)
        return value.isoformat(timespec="microseconds")
    return value


def from_json(ctype: ColumnType, value: object) -> object:
    """The column value of a JSON value (ValueError when it does not fit the type)."""
    if value is None:
        return None
    if ctype is ColumnType.INT:
        if type(value) is not int:
            raise ValueError(f"expected an integer, got {value!r:.60}")
        return value
    if ctype is ColumnType.FLOAT:
        if isinstance(value, str) and value in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[value]
        if type(value) not in (int, float):
            raise ValueError(f"expected a number, got {value!r:.60}")
        try:
            number = float(value)  # type: ignore[arg-type]
        except OverflowError:
            # a JSON integer beyond the float range: a bad value of its row, like any other
            # (OverflowError is no ValueError, and ended the whole import)
            raise ValueError(f"expected a number in the float range, got {value!r:.60}") from None
        return _in_float_range(number, value)
    if ctype is ColumnType.BOOL:
        if type(value) is not bool:
            raise ValueError(f"expected true or false, got {value!r:.60}")
        return value
    if ctype is ColumnType.TEXT:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r:.60}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r:.60}")
    if ctype is ColumnType.BYTES:
        return _base64(value)
    return _datetime(value)


def to_csv(ctype: ColumnType, value: object) -> str:
    """The CSV field of a column value."""
    if value is None:
        return CSV_NULL
    if ctype is ColumnType.TEXT:
        assert isinstance(value, str)
        return "\\" + value if value.startswith("\\") else value
    if ctype is ColumnType.BOOL:
        return "true" if value else "false"
    if ctype is ColumnType.FLOAT:
        return repr(value)
    encoded = to_json(ctype, value)
    return str(encoded)


def from_csv(ctype: ColumnType, field: str) -> object:
    """The column value of a CSV field (ValueError when it does not fit the type)."""
    if field == CSV_NULL:
        return None
    if ctype is ColumnType.TEXT:
        return field[1:] if field.startswith("\\") else field
    if ctype is ColumnType.INT:
        text = field.strip()
        if _INT_TEXT.fullmatch(text) is None:
            raise ValueError(f"expected an integer (decimal digits), got {field!r:.60}")
        return int(text)
    if ctype is ColumnType.FLOAT:
        text = field.strip()
        if text in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[text]
        if _FLOAT_TEXT.fullmatch(text) is None:
            raise ValueError(
                f"expected a number (decimal, with an optional exponent) or nan, inf, -inf, "
                f"got {field!r:.60}"
            )
        return _in_float_range(float(text), field)
    if ctype is ColumnType.BOOL:
        text = field.strip().lower()
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise ValueError(f"expected true or false, got {field!r:.60}")
    if ctype is ColumnType.BYTES:
        return _base64(field)
    return _datetime(field)


def _in_float_range(number: float, given: object) -> float:
    """`number` if finite. A number written as digits that is not (1e400, or Python's NaN and
    Infinity tokens in JSON) was stored as inf or nan: the forms for those are the strings."""
    if not math.isfinite(number):
        raise ValueError(
            f'expected a number in the float range ("nan", "inf", "-inf" for the values that '
            f"are not finite), got {given!r:.60}"
        )
    return number


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"expected base64, got {text!r:.60}") from None


def _datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected an ISO 8601 date and time, got {text!r:.60}") from None
