"""`export_table` and `import_rows`: every column type survives the round trip."""

from __future__ import annotations

import csv
import io
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.cli.output import exit_code_for
from jetstore.errors import (
    ColumnNotFound,
    DatabaseDirtyShutdown,
    InvalidParameter,
    ObjectNotFound,
)
from jetstore.tables.schema import ColumnType
from jetstore.tools.export import export_table
from jetstore.tools.importer import ImportInterrupted, import_rows
from jetstore.tools.values import from_csv, from_json, to_csv, to_json

from .conftest import OPTIONS

COLUMNS: list[Any] = [
    ("id", "int"),
    {"name": "name", "type": "text", "nullable": True},
    {"name": "photo", "type": "bytes", "nullable": True},
    {"name": "when", "type": "datetime", "nullable": True},
    {"name": "score", "type": "float", "nullable": True},
    {"name": "flag", "type": "bool", "nullable": True},
]
ROWS: list[dict[str, object]] = [
    {
        "id": 1,
        "name": "Ada",
        "photo": b"\x00\x01\xff",
        "when": datetime(2024, 5, 6, 7, 8, 9, 10),
        "score": 1.5,
        "flag": True,
    },
    {"id": 2, "name": None, "photo": None, "when": None, "score": None, "flag": None},
    {
        "id": 3,
        "name": "\\N",
        "photo": b"",
        "when": datetime(2024, 1, 1, tzinfo=UTC),
        "score": -0.0,
        "flag": False,
    },
    {
        "id": 4,
        "name": '\\back, "quoted"\nnewline',
        "photo": b"x" * 9000,
        "when": datetime(1970, 1, 1),
        "score": math.inf,
        "flag": None,
    },
    {"id": 5, "name": "", "photo": b"y", "when": None, "score": 1e300, "flag": True},
]


def make(directory: Path, rows: list[dict[str, object]]) -> None:
    with jetstore.open(directory, **OPTIONS) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", COLUMNS, primary_key="id")
        with db.transaction() as txn:
            for row in rows:
                txn.table("t").insert(row)


def read(directory: Path) -> list[dict[str, object]]:
    with (
        jetstore.open(directory, **OPTIONS) as instance,
        instance.database("main").transaction() as txn,
    ):
        return list(txn.table("t").scan())


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    make(tmp_path / "a", ROWS)
    make(tmp_path / "b", [])
    out = io.StringIO()
    result = export_table(tmp_path / "a" / "main.edb", "t", out, fmt=fmt)
    assert result.rows == len(ROWS)
    with jetstore.open(tmp_path / "b", **OPTIONS) as instance:
        imported = import_rows(
            instance.database("main"), "t", io.StringIO(out.getvalue()), fmt=fmt, batch_size=2
        )
    assert imported.inserted == len(ROWS) and imported.failed == 0 and imported.batches == 3
    assert read(tmp_path / "b") == read(tmp_path / "a")


def test_import_reports_failures_with_line_numbers(tmp_path: Path) -> None:
    make(tmp_path, [])
    lines = "\n".join(
        [
            '{"id": 1, "name": "ok"}',
            '{"id": "two"}',
            "not json",
            '{"id": 1, "name": "duplicate"}',
            '{"id": 5, "nope": 1}',
            "",
            '{"id": 6, "photo": "!!notbase64"}',
            '{"id": 7, "when": "2024-02-03T04:05:06"}',
        ]
    )
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", io.StringIO(lines))
    assert result.inserted == 2 and result.rows == 7
    assert [f["line"] for f in result.failures] == [2, 3, 4, 5, 7]
    assert "KeyDuplicate" in result.failures[2]["error"]
    assert [r["id"] for r in read(tmp_path)] == [1, 7]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_input_that_is_not_utf8_stops_the_import_saying_where_to_resume(
    tmp_path: Path, fmt: str
) -> None:
    """Bytes that are not UTF-8 (a file saved in another encoding) end the import with
    InvalidParameter, not an internal UnicodeDecodeError: every row read before them is
    imported, and the message names the line to resume after; importing the rest of the
    converted file then completes the table."""
    make(tmp_path, [])
    good = [f'{{"id": {i}, "name": "row {i}"}}' for i in range(3000)]
    if fmt == "csv":
        good = ["id,name"] + [f"{i},row {i}" for i in range(3000)]
    data = ("\n".join(good) + "\n").encode() + "caf\u00e9\n".encode("latin-1")
    source = tmp_path / f"input.{fmt}"
    source.write_bytes(data)
    with (
        jetstore.open(tmp_path, **OPTIONS) as instance,
        open(source, encoding="utf-8", newline="") as stream,
        pytest.raises(InvalidParameter) as info,
    ):
        import_rows(instance.database("main"), "t", stream, fmt=fmt, batch_size=500)
    message = str(info.value)
    match = re.search(r"not UTF-8 after line (\d+)", message)
    assert match is not None, message
    resume = int(match.group(1))
    assert 0 < resume <= len(good)
    header = 1 if fmt == "csv" else 0
    imported = [r["id"] for r in read(tmp_path)]
    assert imported == list(range(resume - header))
    assert f"the {len(imported)} row(s) before it were imported" in message
    assert f"import the lines after line {resume}" in (info.value.hint or "")
    rest = good[resume:] if fmt == "jsonl" else ["id,name", *good[resume:]]
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        import_rows(instance.database("main"), "t", io.StringIO("\n".join(rest)), fmt=fmt)
    assert [r["id"] for r in read(tmp_path)] == list(range(3000))


def test_import_csv_with_unknown_column_is_refused(tmp_path: Path) -> None:
    make(tmp_path, [])
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        with pytest.raises(ColumnNotFound):
            import_rows(instance.database("main"), "t", io.StringIO("id,bogus\n1,2\n"), fmt="csv")
        with pytest.raises(ObjectNotFound):
            import_rows(instance.database("main"), "missing", io.StringIO(""))


def test_import_csv_with_a_column_named_twice_is_refused(tmp_path: Path) -> None:
    # Defect: the row dict kept the last field of a repeated name, so "id,name,name" stored
    # "b" and dropped "a" without a word.
    make(tmp_path, [])
    source = io.StringIO("id,name,name\n1,a,b\n")
    with jetstore.open(tmp_path, **OPTIONS) as instance, pytest.raises(InvalidParameter) as info:
        import_rows(instance.database("main"), "t", source, fmt="csv")
    message = str(info.value)
    assert "line 1" in message and "'name' twice" in message and "fields 2 and 3" in message
    assert exit_code_for(info.value) == 2
    assert read(tmp_path) == []


def test_csv_round_trips_a_field_longer_than_the_csv_modules_limit(tmp_path: Path) -> None:
    # Defect: csv refuses a field over 131072 characters (csv.Error, not ValueError), so a
    # CSV export holding a long text or bytes value ended its import in an internal error.
    rows: list[dict[str, object]] = [
        {"id": 1, "name": "x" * 200_000, "photo": b"y" * 120_000, "when": None},
        {"id": 2, "name": "short", "photo": None, "when": None},
    ]
    make(tmp_path / "a", rows)
    make(tmp_path / "b", [])
    out = io.StringIO()
    export_table(tmp_path / "a" / "main.edb", "t", out, fmt="csv")
    limit = csv.field_size_limit()
    with jetstore.open(tmp_path / "b", **OPTIONS) as instance:
        imported = import_rows(
            instance.database("main"), "t", io.StringIO(out.getvalue(), newline=""), fmt="csv"
        )
    assert imported.failed == 0 and imported.inserted == 2
    assert read(tmp_path / "b") == read(tmp_path / "a")
    assert csv.field_size_limit() == limit  # the process's limit is restored


def test_import_malformed_csv_line_is_a_failed_row(tmp_path: Path) -> None:
    # Defect: csv.Error (a lone "\r" in an unquoted field, read from a stream that splits
    # lines at "\n" only) is no ValueError: it escaped import_rows, an internal error.
    make(tmp_path, [])
    source = io.StringIO("id,name\n1,a\rb\n2,c\n")
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", source, fmt="csv")
    assert result.inserted == 1 and [f["line"] for f in result.failures] == [2]
    assert "malformed CSV" in result.failures[0]["error"]
    assert [r["id"] for r in read(tmp_path)] == [2]
    with jetstore.open(tmp_path, **OPTIONS) as instance, pytest.raises(InvalidParameter) as info:
        import_rows(instance.database("main"), "t", io.StringIO("id,na\rme\n"), fmt="csv")
    assert "CSV header (line 1)" in str(info.value)


def test_a_csv_quote_left_open_is_a_failed_row_not_a_value_holding_the_rest(
    tmp_path: Path,
) -> None:
    # A CSV file cut short inside a quoted field (an export killed mid-row, a partial copy),
    # or a stray opening quote: the field ran on to the end of the file, and the row was
    # inserted with the following lines as its text, those rows lost without a word.
    make(tmp_path, [])
    source = io.StringIO('id,name\n1,a\n2,"cut short\n3,c\n4,d\n')
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", source, fmt="csv")
    assert result.inserted == 1 and result.failed == 1
    (failure,) = result.failures
    assert failure["line"] == 5 and "malformed CSV" in failure["error"]
    assert "line 3" in failure["error"]  # where the field that never closed began
    assert [r["id"] for r in read(tmp_path)] == [1]


def test_import_float_beyond_the_float_range_is_a_failed_row(tmp_path: Path) -> None:
    # Defect: "1e400" (CSV) and 1e400, Infinity, NaN (JSON lines, as Python's json reads
    # them) were stored as inf and nan: an overflow or a non-JSON token taken for a value.
    make(tmp_path, [])
    jsonl = "\n".join(
        [
            '{"id": 1, "score": 1e400}',
            '{"id": 2, "score": -Infinity}',
            '{"id": 3, "score": NaN}',
            '{"id": 4, "score": "-inf"}',
            '{"id": 5, "score": 1e308}',
        ]
    )
    csv_text = "id,score\n6,1e400\n7,-1e999\n8,inf\n"
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        db = instance.database("main")
        from_lines = import_rows(db, "t", io.StringIO(jsonl))
        from_csv_file = import_rows(db, "t", io.StringIO(csv_text), fmt="csv")
    assert [f["line"] for f in from_lines.failures] == [1, 2, 3]
    assert [f["line"] for f in from_csv_file.failures] == [2, 3]
    for failure in [*from_lines.failures, *from_csv_file.failures]:
        assert "column 'score'" in failure["error"] and "float range" in failure["error"]
    assert [(r["id"], r["score"]) for r in read(tmp_path)] == [
        (4, -math.inf),
        (5, 1e308),
        (8, math.inf),
    ]


def test_import_json_line_naming_a_column_twice_is_a_failed_row(tmp_path: Path) -> None:
    # Defect: json.loads keeps the last value of a repeated name: '{"id": 1, "id": 2}' stored
    # id 2, the 1 dropped unseen (the CSV header is refused for the same reason).
    make(tmp_path, [])
    lines = '{"id": 1, "name": "a", "id": 2}\n{"id": 3}\n'
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", io.StringIO(lines))
    assert result.inserted == 1 and [f["line"] for f in result.failures] == [1]
    assert "'id' is given twice" in result.failures[0]["error"]
    assert [r["id"] for r in read(tmp_path)] == [3]


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("csv", "\ufeffid,name\n1,a\n2,b\n"),
        ("csv", '\ufeff"id",name\n1,a\n2,b\n'),
        ("jsonl", '\ufeff{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n'),
    ],
)
def test_import_skips_a_byte_order_mark(tmp_path: Path, fmt: str, text: str) -> None:
    # Defect: a BOM (as Windows editors and spreadsheets write UTF-8) made the first CSV
    # column "\ufeffid", unknown to the table (ColumnNotFound), and the first JSON line
    # malformed.
    make(tmp_path, [])
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", io.StringIO(text), fmt=fmt)
    assert result.failed == 0 and result.inserted == 2
    assert [(r["id"], r["name"]) for r in read(tmp_path)] == [(1, "a"), (2, "b")]


def test_export_refuses_a_dirty_database_and_unknown_table(tmp_path: Path) -> None:
    make(tmp_path / "a", ROWS[:1])
    with pytest.raises(ObjectNotFound, match="tables: t"):
        export_table(tmp_path / "a" / "main.edb", "zz", io.StringIO())
    instance = jetstore.open(tmp_path / "b", **OPTIONS)
    instance.database("main", create=True)
    instance.simulate_crash()
    with pytest.raises(DatabaseDirtyShutdown):
        export_table(tmp_path / "b" / "main.edb", "t", io.StringIO())


@pytest.mark.parametrize("ctype", list(ColumnType))
def test_values_round_trip(ctype: ColumnType) -> None:
    samples: dict[ColumnType, list[object]] = {
        ColumnType.INT: [0, -(1 << 63), (1 << 63) - 1],
        ColumnType.FLOAT: [0.1, -math.inf, 5e-324],
        ColumnType.BOOL: [True, False],
        ColumnType.TEXT: ["", "\\N", "\\", "a\\b", "\u00e9\n"],
        ColumnType.BYTES: [b"", b"\x00" * 5],
        ColumnType.DATETIME: [datetime(2000, 1, 1), datetime(2000, 1, 1, tzinfo=UTC)],
    }
    for value in [*samples[ctype], None]:
        assert from_json(ctype, to_json(ctype, value)) == value
        assert from_csv(ctype, to_csv(ctype, value)) == value
    assert math.isnan(from_json(ColumnType.FLOAT, to_json(ColumnType.FLOAT, math.nan)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected"):
        from_csv(ColumnType.INT, "x")


@pytest.mark.parametrize(
    ("ctype", "text"),
    [
        (ColumnType.INT, "1_000"),
        (ColumnType.INT, "\u0661\u0662"),  # Arabic-Indic digits: int() reads 12
        (ColumnType.INT, "0x10"),
        (ColumnType.FLOAT, "1_0.5"),
        (ColumnType.FLOAT, "Infinity"),
        (ColumnType.FLOAT, "NaN"),
        (ColumnType.FLOAT, "+inf"),
        (ColumnType.FLOAT, "-nan"),
        (ColumnType.FLOAT, "\u0661.5"),
    ],
)
def test_csv_numbers_only_in_the_forms_export_writes(ctype: ColumnType, text: str) -> None:
    # Defect: int() and float() took "1_000", digits of other scripts and every spelling of
    # infinity and NaN, so a typo or another tool's format was stored as a number.
    with pytest.raises(ValueError, match="expected"):
        from_csv(ctype, text)


@pytest.mark.parametrize(
    ("text", "value"),
    [(" 12 ", 12.0), ("-3", -3.0), ("1.", 1.0), (".5", 0.5), ("1e+16", 1e16), ("-1.5E-3", -0.0015)],
)
def test_csv_floats_in_decimal_forms_are_read(text: str, value: float) -> None:
    assert from_csv(ColumnType.FLOAT, text) == value
    assert from_csv(ColumnType.INT, "-42") == -42 and from_csv(ColumnType.INT, "+7") == 7


def test_import_csv_names_the_line_and_column_of_a_number_with_underscores(
    tmp_path: Path,
) -> None:
    make(tmp_path, [])
    source = io.StringIO("id,score\n1,2.5\n1_000,1\n3,1_0.5\n")
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", source, fmt="csv")
    assert result.inserted == 1
    assert [f["line"] for f in result.failures] == [3, 4]
    assert "column 'id'" in result.failures[0]["error"] and "1_000" in result.failures[0]["error"]
    assert "column 'score'" in result.failures[1]["error"]
    assert [r["id"] for r in read(tmp_path)] == [1]


def test_import_json_number_too_large_for_a_float_is_a_failed_row(tmp_path: Path) -> None:
    # Defect: float() of a JSON integer beyond the float range raised OverflowError, not
    # ValueError, so the whole import ended in an internal error instead of a failed line.
    make(tmp_path, [])
    lines = '{"id": 1, "score": 1' + "0" * 400 + '}\n{"id": 2, "score": 3}\n'
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        result = import_rows(instance.database("main"), "t", io.StringIO(lines))
    assert result.inserted == 1 and [f["line"] for f in result.failures] == [1]
    assert "column 'score'" in result.failures[0]["error"]


def test_csv_round_trips_a_text_with_a_lone_carriage_return(tmp_path: Path) -> None:
    # Defect: QUOTE_MINIMAL with lineterminator "\n" left a field holding a lone "\r"
    # unquoted; the reader took the "\r" for a line end, so import stored "x" for "x\r2" and
    # reported the rest as a bad line (and a row that parsed, silently, as another record).
    rows: list[dict[str, object]] = [
        {"id": 1, "name": "x\r2", "photo": None, "when": None, "score": None, "flag": None},
        {"id": 3, "name": "y\r\n", "photo": None, "when": None, "score": None, "flag": None},
    ]
    make(tmp_path / "a", rows)
    make(tmp_path / "b", [])
    out = io.StringIO()
    export_table(tmp_path / "a" / "main.edb", "t", out, fmt="csv")
    with jetstore.open(tmp_path / "b", **OPTIONS) as instance:
        imported = import_rows(
            instance.database("main"), "t", io.StringIO(out.getvalue(), newline=""), fmt="csv"
        )
    assert imported.failed == 0 and imported.inserted == 2
    assert read(tmp_path / "b") == read(tmp_path / "a")


def test_a_batch_over_the_transaction_bound_imports_every_row_that_fits(tmp_path: Path) -> None:
    """A row that takes a batch's transaction over `max_transaction_bytes` rolls it back
    (`VersionStoreOutOfMemory`) with the rows before it: they were counted as inserted while
    nothing was stored, and the rows after it failed with NotInTransaction."""
    make(tmp_path, [])
    bound = 64 * 1024
    photo = "A" * 26_000  # base64 of 19,500 bytes: three such rows fit the bound, not four
    lines = [f'{{"id": {i}, "photo": "{photo}"}}' for i in range(1, 8)]
    lines.insert(3, '{"id": 99, "photo": "' + "B" * (bound * 2) + '"}')  # too large alone
    options = {**OPTIONS, "max_transaction_bytes": bound}
    with jetstore.open(tmp_path, **options) as instance:
        result = import_rows(
            instance.database("main"), "t", io.StringIO("\n".join(lines)), batch_size=8
        )
    assert [f["line"] for f in result.failures] == [4]
    assert "VersionStoreOutOfMemory" in result.failures[0]["error"]
    assert result.rows == 8 and result.inserted == 7 and result.failed == 1
    assert [r["id"] for r in read(tmp_path)] == list(range(1, 8))


def _interrupt_commit(monkeypatch: pytest.MonkeyPatch, number: int) -> None:
    """KeyboardInterrupt inside the `number`th commit, after its record reached the log and
    before the database showed it: the commit is in doubt (the instance fails)."""
    from jetstore.pages.pointindex import PointReadIndex

    real = PointReadIndex.advance
    calls = [0]

    def advance(self: PointReadIndex, *args: Any) -> None:
        calls[0] += 1
        if calls[0] == number:
            raise KeyboardInterrupt
        real(self, *args)

    monkeypatch.setattr(PointReadIndex, "advance", advance)


def _jsonl(ids: range) -> str:
    return "".join(f'{{"id": {i}, "name": "n{i}"}}\n' for i in ids)


def test_an_interrupted_commit_is_in_doubt_not_failed_and_the_committed_rows_are_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: Ctrl-C during an import left no word of how many rows were committed, and a
    # batch whose commit was under way was counted as failed although it may be stored.
    make(tmp_path, [])
    _interrupt_commit(monkeypatch, 3)
    instance = jetstore.open(tmp_path, **OPTIONS)
    try:
        with pytest.raises(ImportInterrupted) as info:
            import_rows(
                instance.database("main"), "t", io.StringIO(_jsonl(range(1, 11))), batch_size=3
            )
    finally:
        instance.close()
    result = info.value.result
    assert result.interrupted and result.inserted == 6 and result.failed == 0
    assert result.in_doubt == 3 and result.in_doubt_lines == [7, 9]
    assert result.committed_through == 6
    assert isinstance(info.value, KeyboardInterrupt)
    monkeypatch.undo()
    assert [r["id"] for r in read(tmp_path)] == list(range(1, 10))  # the record was logged


def test_an_interrupt_between_commits_leaves_nothing_in_doubt(tmp_path: Path) -> None:
    make(tmp_path, [])

    class Interrupted(io.StringIO):
        def __next__(self) -> str:
            line = super().__next__()
            if '"id": 8' in line:
                raise KeyboardInterrupt
            return line

    with (
        jetstore.open(tmp_path, **OPTIONS) as instance,
        pytest.raises(ImportInterrupted) as info,
    ):
        import_rows(instance.database("main"), "t", Interrupted(_jsonl(range(1, 11))), batch_size=3)
    result = info.value.result
    assert result.interrupted and result.inserted == 6 and result.in_doubt == 0
    assert result.committed_through == 6 and result.failed == 0
    assert [r["id"] for r in read(tmp_path)] == list(range(1, 7))


def test_a_commit_in_doubt_after_a_failed_flush_ends_the_import_without_counting_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: the rows of a batch whose commit record reached the log were counted as
    # failed (they may well be stored), and the import went on into a failed instance.
    from jetstore.errors import DiskIO
    from jetstore.instance.instance import Instance

    make(tmp_path, [])
    real = Instance.wait_durable
    calls = [0]

    def wait_durable(self: Instance, position: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            error = DiskIO("the log flush failed (injected)", hint="check the disk")
            self.fail(error)
            raise error
        real(self, position)

    monkeypatch.setattr(Instance, "wait_durable", wait_durable)
    instance = jetstore.open(tmp_path, **OPTIONS)
    try:
        result = import_rows(
            instance.database("main"), "t", io.StringIO(_jsonl(range(1, 11))), batch_size=3
        )
    finally:
        instance.close()
    assert result.inserted == 3 and result.failed == 0 and result.failures == []
    assert result.in_doubt == 3 and result.in_doubt_lines == [4, 6]
    assert "lines 4-6 is in doubt" in result.stopped and "injected" in result.stopped
    assert result.rows == 6 and not result.interrupted
