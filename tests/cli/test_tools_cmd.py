"""`jetstore integrity | compact | repair | export | import`: JSON output and exit codes."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.cli import tools_cmd
from jetstore.cli.main import run
from jetstore.io.files import FileSystem
from jetstore.io.handles import DEFAULT_REGISTRY
from jetstore.pages.btree import iter_nodes
from jetstore.tools.dbfile import OfflineDatabase

from .conftest import ROWS, SMALL, RunJson, entry_point, flip, run_entry_point, snapshot


def leaf_pages(path: Path) -> tuple[list[int], int]:
    with OfflineDatabase(FileSystem(), str(path)) as db:
        pages = [n.pgno for n in iter_nodes(db, db.root()) if n.leaf and n.pgno is not None]
        return pages, db.page_size


def test_integrity_clean_then_damaged(closed: Path, run_json: RunJson) -> None:
    db = closed / "main.edb"
    code, document = run_json("integrity", db)
    assert code == 0 and document["result"]["ok"] is True
    assert document["result"]["tables"]["t"]["records"] == ROWS
    pages, page_size = leaf_pages(db)
    flip(db, pages[1] * page_size + 100)
    code, document = run_json("integrity", db)
    assert code == 1 and document["ok"] is False
    problems = document["result"]["problems"]
    assert problems[0]["page"] == pages[1] and problems[0]["area"] == "tree"


def test_a_damaged_page_stopping_export_or_compact_names_integrity_and_repair(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # The way out was the engine's: run `jetstore logs verify DIR` (the logs have nothing to
    # do with a damaged page of a clean file) and restore; never repair, the tool for it.
    db = closed / "main.edb"
    pages, page_size = leaf_pages(db)
    flip(db, pages[1] * page_size + 100)
    for args in (("export", db, "t", "-o", tmp_path / "t.jsonl"), ("compact", db)):
        code, document = run_json(*args)
        assert code == 1, document
        error = document["error"]
        assert error["name"] == "ReadVerifyFailure" and f"page {pages[1]}" in error["detail"]
        assert f"jetstore integrity {db}" in error["hint"]
        assert f"jetstore repair {db}" in error["hint"]
        assert "logs verify" not in error["hint"]


def test_integrity_refuses_dirty_and_open(crashed: Path, closed: Path, run_json: RunJson) -> None:
    code, document = run_json("integrity", crashed / "main.edb")
    assert code == 3 and document["error"]["name"] == "DatabaseDirtyShutdown"
    assert "jetstore recover" in document["error"]["hint"]
    with jetstore.open(closed, **SMALL):
        code, document = run_json("integrity", closed / "main.edb")
    assert code == 3 and document["error"]["name"] == "InstanceNameInUse"
    code, document = run_json("integrity", closed / "nope.edb")
    assert code == 4 and document["error"]["name"] == "FileNotFound"


def test_compact_reports_pages(closed: Path, run_json: RunJson) -> None:
    code, document = run_json("compact", closed / "main.edb", "--keep-original")
    assert code == 0
    result = document["result"]
    assert result["pages_after"] <= result["pages_before"]
    assert result["integrity"]["ok"] is True
    assert Path(result["kept_original"]).exists()
    code, document = run_json("integrity", closed / "main.edb")
    assert code == 0


def test_compact_refusing_to_overwrite_a_kept_original_is_a_usage_error(
    closed: Path, run_json: RunJson
) -> None:
    # The refusal (NAME.edb.precompact exists: move it or run without --keep-original) is
    # the operator's to fix; it ended with exit 5, which says "a bug in jetstore".
    assert run_json("compact", closed / "main.edb", "--keep-original")[0] == 0
    before = snapshot(closed)
    code, document = run_json("compact", closed / "main.edb", "--keep-original")
    assert code == 2
    error = document["error"]
    assert (error["name"], error["exit_code"]) == ("DatabaseDuplicate", 2)
    assert error["path"] == str(closed / "main.edb.precompact")
    assert "without --keep-original" in error["hint"]
    assert snapshot(closed) == before


def test_repair_report_then_apply(closed: Path, run_json: RunJson) -> None:
    db = closed / "main.edb"
    code, document = run_json("repair", db)
    assert code == 0 and document["result"]["data_lost"] is False
    pages, page_size = leaf_pages(db)
    flip(db, pages[2] * page_size + 100)
    code, document = run_json("repair", db)
    assert code == 1 and document["result"]["applied"] is False
    assert document["result"]["damaged_pages"][0]["page"] == pages[2]
    code, document = run_json("repair", db, "--accept-data-loss")
    assert code == 0 and document["result"]["applied"] is True
    result = document["result"]
    assert result["integrity_ok"] is True and result["moved_logs_to"]
    kept = result["tables"]["t"]["records_kept"]
    assert 0 < kept < ROWS
    code, document = run_json("integrity", db)
    assert code == 0 and document["result"]["tables"]["t"]["records"] == kept


def test_repair_report_says_a_dirty_neighbour_would_refuse_the_run(
    closed: Path,
    run_json: RunJson,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = jetstore.open(closed, **SMALL)
    instance.database("other", create=True)
    instance.simulate_crash()
    db = closed / "main.edb"
    pages, page_size = leaf_pages(db)
    flip(db, pages[2] * page_size + 100)
    code, document = run_json("repair", db)
    assert code == 1
    refusal = document["result"]["would_refuse"]
    assert refusal["name"] == "DatabaseDirtyShutdown"
    assert refusal["path"] == str(closed / "other.edb")
    monkeypatch.setenv("COLUMNS", "2000")  # paths of any length on one line
    capsys.readouterr()
    assert run(["repair", str(db)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "--accept-data-loss would be refused" in out
    assert "other.edb" in out and "jetstore recover" in out
    assert "then run again with --accept-data-loss" in out


def test_export_import_through_the_cli(closed: Path, tmp_path: Path, run_json: RunJson) -> None:
    out = tmp_path / "t.csv"
    code, document = run_json("export", closed / "main.edb", "t", "--format", "csv", "-o", out)
    assert code == 0 and document["result"]["rows"] == ROWS
    code, document = run_json("export", closed / "main.edb", "t")
    assert code == 2  # --json needs --output
    target = tmp_path / "target"
    with jetstore.open(target, **SMALL) as instance:
        instance.database("main", create=True).create_table(
            "t", [("id", "int"), ("v", "text")], primary_key="id"
        )
    code, document = run_json("import", target / "main.edb", "t", out)
    assert code == 0 and document["result"]["inserted"] == ROWS
    code, document = run_json("import", target / "main.edb", "t", out)
    assert code == 1 and document["result"]["failed"] == ROWS
    assert document["result"]["failures"][0]["line"] == 2
    assert "KeyDuplicate" in document["result"]["failures"][0]["error"]
    with jetstore.open(target, **SMALL):
        code, document = run_json("import", target / "main.edb", "t", out)
    assert code == 3


def test_export_to_a_csv_file_writes_csv_as_import_reads_it(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # Without --format, export wrote JSON lines into t.csv, and import (which takes the
    # format of a .csv FILE from its name) refused the first line as a CSV header.
    out = tmp_path / "t.CSV"
    code, document = run_json("export", closed / "main.edb", "t", "-o", out)
    assert code == 0 and document["result"]["format"] == "csv"
    assert out.read_text(encoding="utf-8").splitlines()[0] == "id,v"
    target = tmp_path / "target"
    with jetstore.open(target, **SMALL) as instance:
        instance.database("main", create=True).create_table(
            "t", [("id", "int"), ("v", "text")], primary_key="id"
        )
    code, document = run_json("import", target / "main.edb", "t", out)
    assert code == 0 and document["result"]["inserted"] == ROWS
    lines = tmp_path / "t.jsonl"
    code, document = run_json("export", closed / "main.edb", "t", "-o", lines)
    assert code == 0 and document["result"]["format"] == "jsonl"
    assert json.loads(lines.read_text(encoding="utf-8").splitlines()[0])["id"] == 0


def test_export_to_dash_writes_to_stdout_as_import_reads_dash_from_stdin(
    closed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    run_json: RunJson,
) -> None:
    # `-o -` wrote a file named "-" in the working directory and nothing to stdout.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run(["export", str(closed / "main.edb"), "t", "-o", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == ROWS and json.loads(lines[0])["id"] == 0
    assert list(work.iterdir()) == []
    code, document = run_json("export", closed / "main.edb", "t", "-o", "-")
    assert code == 2 and "--json needs --output FILE" in document["error"]["message"]
    assert list(work.iterdir()) == []


def test_import_of_a_missing_file_names_it_and_says_to_check_the_path(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # Defect: the hint was FileNotFound's generic one, "run `jetstore logs verify DIR`",
    # about the instance's files, when the file the operator named is what is missing.
    missing = tmp_path / "nowhere" / "rows.jsonl"
    before = snapshot(closed)
    code, document = run_json("import", closed / "main.edb", "t", missing)
    assert code == 4
    error = document["error"]
    assert error["name"] == "FileNotFound"
    assert str(missing) in error["detail"] and "import file" in error["detail"]
    assert "check the path" in error["hint"] and "logs verify" not in error["hint"]
    assert snapshot(closed) == before


def test_export_into_a_missing_directory_names_it_and_says_to_check_the_path(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # Defect: as for import's FILE, the hint was to run `jetstore logs verify DIR`.
    output = tmp_path / "nowhere" / "t.jsonl"
    code, document = run_json("export", closed / "main.edb", "t", "-o", output)
    assert code == 4
    error = document["error"]
    assert error["name"] == "FileNotFound"
    assert (
        f"'{output}'" in error["detail"] and f"'{output.parent}' does not exist" in error["detail"]
    )
    assert "check the path" in error["hint"] and "logs verify" not in error["hint"]
    assert not output.parent.exists()


def test_export_refuses_to_write_over_the_instance_files(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # Defect: `export DB T -o DB` renamed the export over the database file it was reading
    # (exit 0): a read-only command destroyed the database. The same for its logs and
    # checkpoint file, or the database reached through another path (a hard link).
    # Nor a kept original (`compact --keep-original`, `repair`): the only copy from before.
    (closed / "main.edb.precompact").write_bytes(b"kept original")
    (closed / "main.edb.damaged-20261123T040000Z").write_bytes(b"kept damaged file")
    before = snapshot(closed)
    (tmp_path / "link.edb").hardlink_to(closed / "main.edb")
    for output in [
        closed / "main.edb",
        tmp_path / "link.edb",
        closed / "edb.log",
        closed / "edb.chk",
        closed / "." / "main.edb",
        closed / "main.edb.precompact",
        closed / "main.edb.damaged-20261123T040000Z",
    ]:
        code, document = run_json("export", closed / "main.edb", "t", "-o", output)
        assert code == 2, (output, document)
        assert document["error"]["name"] == "InvalidPath"
        assert not Path(str(output) + ".partial").exists()
    assert snapshot(closed) == before
    code, _ = run_json("integrity", closed / "main.edb")
    assert code == 0


def test_entry_point_integrity_and_export(closed: Path, tmp_path: Path) -> None:
    completed = run_entry_point("integrity", closed / "main.edb", "--json")
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["command"] == "integrity" and document["ok"] is True
    completed = run_entry_point("export", closed / "main.edb", "t")
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == ROWS and json.loads(lines[0])["id"] == 0
    completed = run_entry_point("compact", closed / "main.edb")
    assert completed.returncode == 0, completed.stderr
    assert "compacted" in completed.stdout


def test_export_and_import_keep_text_with_lone_surrogates(
    tmp_path: Path, run_json: RunJson
) -> None:
    """A text value may hold lone surrogates (the engine stores text as UTF-8 with
    surrogatepass, as a Python str allows): inline and as long-value chunks, with a
    surrogate at a chunk boundary. Export wrote them to a strict UTF-8 stream and failed
    with an internal error; the file now holds them as the engine does, and import reads
    them back exactly, also a high surrogate followed by a low one (not an astral
    character), in both formats, through a file and through stdout."""
    source = tmp_path / "source"
    texts = {
        1: "a\ud800b",
        2: "\udfff" * 3000 + "€" * 4000,  # a long value: chunks split surrogates and euros
        3: "\ud83d\ude00 and 😀",  # two lone surrogates, then the character they would pair to
        4: "plain é",
    }
    with jetstore.open(source, **SMALL) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
        with db.transaction() as txn:
            for key, text in texts.items():
                txn.table("t").insert({"id": key, "v": text})
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"t.{fmt}"
        code, document = run_json("export", source / "main.edb", "t", "--format", fmt, "-o", out)
        assert code == 0, document
        assert document["result"]["rows"] == len(texts)
        target = tmp_path / f"target-{fmt}"
        with jetstore.open(target, **SMALL) as instance:
            instance.database("main", create=True).create_table(
                "t", [("id", "int"), ("v", "text")], primary_key="id"
            )
        code, document = run_json("import", target / "main.edb", "t", out)
        assert code == 0 and document["result"]["inserted"] == len(texts), document
        with jetstore.open(target, **SMALL) as instance:
            txn = instance.database("main").transaction()
            assert {r["id"]: r["v"] for r in txn.table("t").scan()} == texts
            txn.rollback()
    completed = subprocess.run(
        [str(entry_point()), "export", str(source / "main.edb"), "t"],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert completed.returncode == 0, completed.stderr
    documents = map(json.loads, completed.stdout.decode("utf-8", "surrogatepass").splitlines())
    assert {document["id"]: document["v"] for document in documents} == texts


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_export_and_import_through_stdio_are_utf8_whatever_the_locale(
    tmp_path: Path, encoding: str
) -> None:
    """The export format is UTF-8 (lone surrogates in their surrogatepass form) also on
    stdout and stdin: with a locale encoding that cannot represent the text (latin-1 has no
    "€", ASCII not even "é"), export ended in an internal error (exit 5). Now stdout gets
    the same bytes a file would, and `import -` reads them back as they were."""
    texts = {1: "a\ud800b", 2: "€ and é", 3: "plain"}
    source, target = tmp_path / "source", tmp_path / "target"
    for directory in (source, target):
        with jetstore.open(directory, **SMALL) as instance:
            db = instance.database("main", create=True)
            db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
            if directory == source:
                with db.transaction() as txn:
                    for key, text in texts.items():
                        txn.table("t").insert({"id": key, "v": text})
    env = {**os.environ, "PYTHONIOENCODING": encoding, "LC_ALL": "C", "LANG": "C"}
    for fmt in ("jsonl", "csv"):
        exported = subprocess.run(
            [str(entry_point()), "export", str(source / "main.edb"), "t", "--format", fmt],
            capture_output=True,
            timeout=60,
            env=env,
        )
        assert exported.returncode == 0, exported.stderr
        written = tmp_path / f"t.{fmt}"
        assert _export_to_file(source, fmt, written) == 0
        assert exported.stdout == written.read_bytes()  # the bytes --output writes
    imported = subprocess.run(
        [str(entry_point()), "import", str(target / "main.edb"), "t", "-", "--format", "csv"],
        input=exported.stdout,
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert imported.returncode == 0, imported.stderr
    with jetstore.open(target, **SMALL) as instance:
        txn = instance.database("main").transaction()
        assert {r["id"]: r["v"] for r in txn.table("t").scan()} == texts
        txn.rollback()


def _export_to_file(source: Path, fmt: str, output: Path) -> int:
    """`jetstore export` to a file, in-process."""
    return run(["export", str(source / "main.edb"), "t", "--format", fmt, "-o", str(output)])


def test_import_into_an_unwritable_directory_is_not_reported_in_use(
    closed: Path, tmp_path: Path, run_json: RunJson, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "t.csv"
    assert run_json("export", closed / "main.edb", "t", "--format", "csv", "-o", out)[0] == 0
    real_open = os.open

    def read_only_mount(path: str, flags: int, *args: int) -> int:
        # Root may write anywhere: the read-only file system is injected where the instance
        # creates (or opens for writing) its lock file.
        if os.path.basename(path) == "jetstore.lock" and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_mount)
    code, document = run_json("import", closed / "main.edb", "t", out)
    assert code != 3, document
    assert document["error"]["name"] == "FileAccessDenied"
    assert "holds its lock" not in document["error"]["message"]
    assert "Read-only file system" in document["error"]["message"]


class _FullDisk(io.StringIO):
    """An output stream on a full disk: every write fails with ENOSPC."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_export_onto_a_full_disk_is_an_io_error_not_an_internal_one(
    closed: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # the path on one line
    out = tmp_path / "t.jsonl"
    real_pwrite = os.pwrite

    def pwrite_on_full_disk(fd: int, data: Any, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".partial"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite_on_full_disk)
    code = run(["export", str(closed / "main.edb"), "t", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "internal error" not in err and "No space left on device" in err
    assert "t.jsonl.partial" in err
    assert list(tmp_path.iterdir()) == [closed]  # neither the export nor its partial file
    monkeypatch.setattr(sys, "stdout", _FullDisk())
    code = run(["export", str(closed / "main.edb"), "t"])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "internal error" not in err and "No space left on device" in err


def test_a_missing_export_directory_or_import_file_is_not_sent_to_the_backups(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # FileNotFound's own hint is about the engine's files ("if the file was lost, restore the
    # database from a backup"): for a mistyped --output directory or import FILE it sent the
    # operator to restore a database that is fine.
    code, document = run_json("export", closed / "main.edb", "t", "-o", tmp_path / "no" / "t.csv")
    assert code == 4 and document["error"]["name"] == "FileNotFound"
    assert "backup" not in document["error"]["hint"]
    assert "check the path" in document["error"]["hint"]
    code, document = run_json("import", closed / "main.edb", "t", tmp_path / "missing.csv")
    assert code == 4 and document["error"]["name"] == "FileNotFound"
    assert "backup" not in document["error"]["hint"]
    assert "check the path" in document["error"]["hint"]


def _handles_on(path: Path) -> list[str]:
    """The registry's open handles on `path` (any owner), as `kind owner` lines."""
    return [
        f"{h.kind} {h.owner}"
        for h in DEFAULT_REGISTRY.open_handles()
        if os.path.abspath(h.description) == os.path.abspath(path)
    ]


def test_import_and_export_open_their_file_through_the_handle_registry(
    closed: Path, tmp_path: Path, run_json: RunJson, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: both opened FILE with the built-in open(), outside the handle registry: the
    # registry never saw them and nothing guaranteed their close.
    out = tmp_path / "t.jsonl"
    partial = tmp_path / "t.jsonl.partial"
    seen: dict[str, list[str]] = {}
    watched = {"import": out}
    real_export, real_import = tools_cmd.export_table, tools_cmd.import_rows

    def export_watched(*args: Any, **kwargs: Any) -> Any:
        seen["export"] = _handles_on(partial)
        return real_export(*args, **kwargs)

    def import_watched(*args: Any, **kwargs: Any) -> Any:
        seen["import"] = _handles_on(watched["import"])
        return real_import(*args, **kwargs)

    monkeypatch.setattr(tools_cmd, "export_table", export_watched)
    monkeypatch.setattr(tools_cmd, "import_rows", import_watched)
    assert run_json("export", closed / "main.edb", "t", "-o", out)[0] == 0
    assert len(seen["export"]) == 1 and seen["export"][0].startswith("file ")
    assert _handles_on(partial) == [] and _handles_on(out) == []
    target = tmp_path / "target"
    with jetstore.open(target, **SMALL) as instance:
        instance.database("main", create=True).create_table(
            "t", [("id", "int"), ("v", "text")], primary_key="id"
        )
    code, document = run_json("import", target / "main.edb", "t", out)
    assert code == 0 and document["result"]["inserted"] == ROWS
    assert len(seen["import"]) == 1 and seen["import"][0].startswith("file ")
    assert _handles_on(out) == []
    # An import that fails midway (bytes that are not UTF-8 after a few rows) closes it too.
    lines = out.read_bytes().splitlines(keepends=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"".join(lines[:3]) + b'{"id": 9999999, "v": "\xff"}\n')
    seen.clear()
    watched["import"] = bad
    code, document = run_json("import", target / "main.edb", "t", bad)
    assert code == 2 and document["error"]["name"] == "InvalidParameter"
    assert len(seen["import"]) == 1
    assert _handles_on(bad) == []


def test_an_interrupted_import_says_what_was_committed_and_exits_130(
    tmp_path: Path,
    run_json: RunJson,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Defect: Ctrl-C printed "aborted" alone: nothing said how many rows were committed, nor
    # whether the batch whose commit was under way was stored.
    from jetstore.pages.pointindex import PointReadIndex

    def empty(name: str) -> Path:
        with jetstore.open(tmp_path / name, **SMALL) as instance:
            instance.database("main", create=True).create_table(
                "t", [("id", "int"), ("v", "text")], primary_key="id"
            )
        return tmp_path / name / "main.edb"

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(f'{{"id": {i}, "v": "x"}}\n' for i in range(1, 11)))
    real = PointReadIndex.advance
    calls = [0]

    def advance(self: PointReadIndex, *args: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:  # inside the second commit, after its record reached the log
            raise KeyboardInterrupt
        real(self, *args)

    first, second = empty("a"), empty("b")
    monkeypatch.setattr(PointReadIndex, "advance", advance)
    code, document = run_json("import", first, "t", rows, "--batch-size", "4")
    assert code == 130 and document["ok"] is False
    result = document["result"]
    assert result["interrupted"] is True and result["inserted"] == 4 and result["failed"] == 0
    assert result["in_doubt"] == 4 and result["in_doubt_lines"] == [5, 8]
    assert result["committed_through"] == 4
    calls[0] = 0
    code = run(["import", str(second), "t", str(rows), "--batch-size", "4"])
    captured = capsys.readouterr()
    assert code == 130
    assert "interrupted: 4 row(s) committed in 1 transaction(s)" in captured.err
    assert "lines 5-8 (4 row(s)) is in doubt" in captured.err
    assert "after line 4" in captured.err and "after line 8 if" in captured.err
    monkeypatch.undo()
    with (
        jetstore.open(tmp_path / "a", **SMALL) as instance,
        instance.database("main").transaction() as txn,
    ):
        # The record of the batch in doubt was in the log: the reopen replayed it.
        assert sorted(r["id"] for r in txn.table("t").scan()) == list(range(1, 9))


def test_import_reads_a_fifo_as_before(tmp_path: Path, run_json: RunJson) -> None:
    # `import DB T <(zcat rows.gz)` names a pipe: the io layer's regular-file rule (right for
    # the engine's own files, read at offsets) must not refuse an import's input.
    import threading

    with jetstore.open(tmp_path / "i", **SMALL) as instance:
        instance.database("main", create=True).create_table(
            "t", [("id", "int"), ("v", "text")], primary_key="id"
        )
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as writer:
            writer.writelines(f'{{"id": {i}, "v": "é"}}\n' for i in range(3000))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    code, document = run_json("import", tmp_path / "i" / "main.edb", "t", fifo)
    feeder.join(10)
    assert code == 0 and document["result"]["inserted"] == 3000
    assert _handles_on(fifo) == []


def test_compact_whose_free_space_cannot_be_read_is_an_io_error_not_an_internal_one(
    closed: Path, run_json: RunJson, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: the preflight read the free space with shutil.disk_usage, whose OSError left
    # the engine bare: "internal error ... this is a bug" (exit 5).
    def statvfs_fails(path: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    before = snapshot(closed)
    monkeypatch.setattr(os, "statvfs", statvfs_fails)
    code, document = run_json("compact", closed / "main.edb")
    assert code == 4, document
    assert document["error"]["name"] == "DiskIO"
    assert str(closed) in document["error"]["detail"]
    monkeypatch.undo()
    assert snapshot(closed) == before
