"""End to end: the installed `jetstore` entry point, in child processes, against real instance
directories in the states each command exists for (issue 5).

The matrix is a table (`CASES`): a state, a command line, the exit code docs/cli.md documents
for it, the error it names (ESE name and number) or a few key result fields, and whether the
command is read-only (then every file of the instance is hashed before and after). Every run
is checked against the envelope contract: exactly one JSON object on stdout, `{"schema": 1,
"ok": <exit code == 0>, "command": ..., "result" | "error"}`, and `error.exit_code` equal to
the process's exit code.

The states are built once (per run of this module) as templates and copied for each case:

- `clean`: closed cleanly; `dirty`: `simulate_crash()` after the commits (three generations);
- `missing_log`: dirty, closed generation 2 deleted;
- `corrupt_page`: clean, a byte flipped in a leaf page of `main.edb`;
- `lost_write`: clean, a leaf page of `main.edb` replaced by another valid image of itself (what
  a lost write leaves: same page number, valid checksum; design D12);
- `torn_tail`: dirty, garbage over the end of the newest log (`edb.log`), past its last frame;
- `corrupt_log`: dirty, a byte flipped in the first frame of closed generation 2;
- `foreign_log`: dirty, generation 2 replaced by generation 2 of another instance;
- `locked_checkpoint`: dirty, `edb.chk` made unreadable and unwritable (`chmod 000`) when not
  root; as root chmod stops nothing, so `chattr +i` (unwritable; root still reads it), or
  those cases are skipped with the reason;
- `open_elsewhere`: clean, held open (with its control socket) by a child process for the
  duration of the case;
- `backed_up`: clean, then a full online backup taken (the set is the `backup_set` state);
- `backup_set` / `damaged_set`: that backup set, intact or with a byte flipped in its image.

Subprocesses start in about 0.4 s each, so the selected cases (only those pytest selected) run
in a small thread pool once per module (`outcomes`, about 35 s for the whole table on two busy
cores); each test then checks its own case's outcome. The case directories live under a short
`/tmp/jse2e-*` root: a live instance's control socket path must fit in `sun_path`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.logframe import decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE
from jetstore.io.files import FileSystem
from jetstore.pages.btree import decode_node, encode_node, iter_nodes
from jetstore.tools.dbfile import OfflineDatabase

from .conftest import ROWS, SMALL, build, flip, snapshot

JETSTORE = Path(sys.executable).parent / "jetstore"
WORKERS = 4
IMPORT_ROWS = 5

Body = dict[str, Any]


# --------------------------------------------------------------------------- the states


def _leaf_pages(path: Path) -> tuple[list[int], int]:
    with OfflineDatabase(FileSystem(), str(path)) as db:
        pages = [n.pgno for n in iter_nodes(db, db.root()) if n.leaf and n.pgno is not None]
        return pages, db.page_size


def _log_end(directory: Path) -> int:
    """Where the valid frames of `edb.log` end (the first byte a torn write would hit)."""
    done = subprocess.run(
        [str(JETSTORE), "logs", "verify", str(directory), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(json.loads(done.stdout)["result"]["generations"][-1]["end_offset"])


def build_templates(base: Path) -> dict[str, Path]:
    t = {name: base / name for name in ("clean", "dirty", "other")}
    build(t["clean"], crash=False)
    build(t["dirty"], crash=True)
    build(t["other"], crash=True)  # the same history in another log stream

    def derive(name: str, source: str) -> Path:
        t[name] = base / name
        shutil.copytree(t[source], t[name])
        return t[name]

    derive("missing_log", "dirty").joinpath(generation_log_name(2)).unlink()

    db = derive("corrupt_page", "clean") / "main.edb"
    pages, page_size = _leaf_pages(db)
    flip(db, pages[1] * page_size + 100)

    db = derive("lost_write", "clean") / "main.edb"
    data = bytearray(db.read_bytes())
    pgno = pages[1]
    node = decode_node(pgno, bytes(data[pgno * page_size : (pgno + 1) * page_size]))
    node.values[0] = bytes(len(node.values[0]))  # an older value of the same size
    data[pgno * page_size : (pgno + 1) * page_size] = encode_node(node, page_size, pgno, 1)
    db.write_bytes(bytes(data))

    end = _log_end(t["dirty"])
    with (derive("torn_tail", "dirty") / CURRENT_LOG).open("r+b") as file:
        file.seek(end)
        file.write(b"\x5a" * 100)

    log = derive("corrupt_log", "dirty") / generation_log_name(2)
    frame = decode_frame(log.read_bytes(), LOG_HEADER_SIZE, 2)
    assert frame is not None
    flip(log, frame.offset + 40)

    shutil.copy(
        t["other"] / generation_log_name(2), derive("foreign_log", "dirty") / generation_log_name(2)
    )

    derive("locked_checkpoint", "dirty")  # locked per case: chattr must be undone before cleanup
    derive("open_elsewhere", "clean")  # held open per case by a child process

    backed_up = derive("backed_up", "clean")
    t["backup_set"] = base / "backup_set"
    with jetstore.open(backed_up, control_socket=False, **SMALL) as instance:
        instance.backup(t["backup_set"], kind="full")
        with instance.database("main").transaction() as txn:  # two more generations after it
            table = txn.table("t")
            for n in range(ROWS, ROWS + 300):
                table.insert({"id": n, "v": f"{n:06d}" * 40})
    image = derive("damaged_set", "backup_set") / "main.edb"
    pages, page_size = _leaf_pages(image)
    flip(image, pages[0] * page_size + 100)
    return t


def lock_mode(probe_dir: Path) -> tuple[str | None, str]:
    """How `edb.chk` is locked here: ("chmod", ...) when not root, ("chattr", ...) as root if
    the file system takes the immutable flag, else (None, why)."""
    if os.geteuid() != 0:
        return "chmod", "chmod 000"
    chattr = shutil.which("chattr")
    if chattr is None:
        return None, "running as root (chmod does not stop root) and chattr is not installed"
    probe = probe_dir / "chattr-probe"
    probe.write_bytes(b"x")
    done = subprocess.run([chattr, "+i", str(probe)], capture_output=True, text=True)
    if done.returncode != 0:
        probe.unlink()
        return None, f"running as root and chattr +i fails here: {done.stderr.strip()}"
    subprocess.run([chattr, "-i", str(probe)], check=True)
    probe.unlink()
    return "chattr", "chattr +i"


def _set_lock(path: Path, mode: str, locked: bool) -> None:
    if mode == "chmod":
        path.chmod(0 if locked else 0o644)
    else:
        subprocess.run(["chattr", "+i" if locked else "-i", str(path)], check=True)


HOLDER = """
import sys, jetstore
instance = jetstore.open(sys.argv[1], **{options!r})
instance.database("main")
print("ready", flush=True)
sys.stdin.read()
instance.close()
"""


@contextlib.contextmanager
def held_open(directory: Path) -> Iterator[int]:
    """`directory` opened (control socket on) by a child process until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(options=SMALL), str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if line.strip() != "ready":
            child.kill()
            _out, err = child.communicate(timeout=30)
            raise AssertionError(f"the holder did not open {directory}: {line!r} {err}")
        yield child.pid
    finally:
        if child.poll() is None:
            try:
                child.communicate(timeout=30)  # closes stdin: the holder closes the instance
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()


# --------------------------------------------------------------------------- the table


@dataclass
class Run:
    """What one case ran against, and what came out."""

    dir: Path  # the state's copy (an instance directory, or a backup set)
    work: Path  # scratch: destinations, copies, input files
    templates: dict[str, Path]
    lock_mode: str | None = None
    holder_pid: int | None = None
    argv: list[str] = field(default_factory=list)
    returncode: int = -1
    stdout: str = ""
    stderr: str = ""
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


Check = Callable[[Body, Run], None]


@dataclass
class Case:
    state: str
    name: str  # unique within the state: the test id is "state-name"
    args: str  # split on spaces; {dir}, {db}, {chk} and {work} are filled in
    exit: int | dict[str, int]  # by lock mode for the locked_checkpoint state
    error: tuple[str, int] | None = None  # (name, ESE code) of the error document
    read_only: bool = False  # nothing under {dir} changes
    check: Check | None = None  # key fields of the result (or error) document
    prepare: Callable[[Run], None] | None = None
    xfail: str | None = None

    @property
    def id(self) -> str:
        return f"{self.state}-{self.name}"

    @property
    def command(self) -> str:
        """The envelope's "command": the sub-command, with its group for grouped ones."""
        words = self.args.split()
        return " ".join(words[:2]) if words[0] in ("dump", "logs") else words[0]


def _import_file(run: Run) -> None:
    lines = [json.dumps({"id": ROWS + i, "v": f"new {i}"}) for i in range(IMPORT_ROWS)]
    (run.work / "rows.jsonl").write_text("\n".join(lines) + "\n")


def _copy_backup_set(run: Run) -> None:
    shutil.copytree(run.templates["backup_set"], run.work / "set")


def _foreign_instance(run: Run) -> None:
    shutil.copytree(run.templates["dirty"], run.work / "foreign")


def _event_names(directory: Path) -> list[str]:
    path = directory / "events.jsonl"
    return [json.loads(line)["name"] for line in path.read_text().splitlines() if line.strip()]


# Checks: a few key fields per case (the doc lists them all; in-process tests cover the rest).


def _clean_header(r: Body, run: Run) -> None:
    assert r["state"] == "clean" and r["problems"] == []
    assert r["required"]["low"] == 0 and all(c["valid"] for c in r["copies"])


def _dirty_header(r: Body, run: Run) -> None:
    assert r["state"] == "dirty" and r["problems"] == []
    assert (r["required"]["low"], r["required"]["high"]) == (1, 3)
    assert r["required"]["first_file"] == "edb00000001.log"


def _checkpoint(r: Body, run: Run) -> None:
    assert r["problems"] == [] and all(c["valid"] for c in r["copies"])
    assert r["first_log_needed"]["present"] is True
    assert [a["name"] for a in r["attached"]] in ([], ["main"])


def _dump_logs_clean(r: Body, run: Run) -> None:
    assert r["verified_ok"] is True and r["missing"] == []
    assert [g["generation"] for g in r["generations"]] == [1, 2, 3]


def _dump_logs_missing(r: Body, run: Run) -> None:
    assert r["verified_ok"] is False and r["missing"] == [2]


def _dump_logs_torn(r: Body, run: Run) -> None:
    assert r["verified_ok"] is True
    assert r["generations"][-1]["status"] == "torn-tail"


def _dump_logs_corrupt(r: Body, run: Run) -> None:
    assert r["verified_ok"] is False
    assert [p["error"] for p in r["problems"] if p["severity"] == "error"] == ["LogFileCorrupt"]


def _verdict(verdict: str, *fragments: str, error: str | None = None) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["verdict"] == verdict and r["ok"] is (verdict in ("clean", "recoverable"))
        for fragment in fragments:
            assert fragment in r["summary"], r["summary"]
        if error is None:
            assert r["open_error"] is None
        else:
            assert r["open_error"]["name"] == error
        if verdict == "data-loss":
            assert f"jetstore recover {run.dir} --accept-data-loss" in r["next_commands"]

    return check


def _diagnose_in_use(r: Body, run: Run) -> None:
    assert r["verdict"] == "in-use" and r["ok"] is False
    assert r["open_by_pid"] == run.holder_pid


def _recovered(replayed: bool, torn: bool = False) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["directory"] == str(run.dir) and r["source"] is None
        assert r["needed"] is replayed and (r["replayed"] > 0) is replayed
        assert r["data_loss"] is None and r["databases"] == ["main"]
        assert (r["torn_tail"] is not None) is torn
        assert _header_state(run.dir) == "clean"

    return check


def _recovered_into(r: Body, run: Run) -> None:
    copy = run.work / "copy"
    assert r["directory"] == str(copy) and r["source"] == str(run.dir)
    assert r["copied"]["files"] > 0 and r["replayed"] > 0
    assert _header_state(copy) == "clean" and _header_state(run.dir) == "dirty"


def _recovered_with_loss(r: Body, run: Run) -> None:
    assert r["accept_data_loss"] is True
    loss = r["data_loss"]
    assert loss is not None and loss["stopped_at"]["generation"] == 1
    assert Path(loss["moved_logs_to"]).parent == run.dir
    assert _header_state(run.dir) == "clean"


def _header_state(directory: Path) -> str:
    done = subprocess.run(
        [str(JETSTORE), "dump", "header", str(directory / "main.edb"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return str(json.loads(done.stdout)["result"]["state"])


def _checksum_ok(r: Body, run: Run) -> None:
    assert r["kind"] == "instance" and r["ok"] is True and r["bad"] == 0
    assert r["open_elsewhere"] is False
    kinds = sorted(f["kind"] for f in r["files"])
    assert kinds.count("database") == 1 and kinds.count("checkpoint") == 1


def _checksum_finds(error: str, code: int, location: str) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["ok"] is False and r["bad"] >= 1
        bad = [p for p in r["problems"] if p["severity"] == "error"]
        assert bad and bad[0]["error"] == error and bad[0]["code"] == code
        assert bad[0]["location"].startswith(location), bad[0]["location"]

    return check


def _checksum_missing_generation(r: Body, run: Run) -> None:
    assert r["ok"] is True  # a missing generation is a warning here: no block is bad
    assert [(p["severity"], p["error"]) for p in r["problems"]] == [("warning", "MissingLogFile")]


def _checksum_torn(r: Body, run: Run) -> None:
    assert r["ok"] is True
    assert [p["severity"] for p in r["problems"]] == ["info"]
    assert "torn tail" in r["problems"][0]["message"]


def _checksum_open(r: Body, run: Run) -> None:
    assert r["open_elsewhere"] is True and r["open_by_pid"] == run.holder_pid


def _integrity_ok(r: Body, run: Run) -> None:
    assert r["ok"] is True and r["errors"] == 0 and r["state"] == "clean"
    assert r["tables"]["t"]["records"] == ROWS


def _integrity_damaged(r: Body, run: Run, error: str = "ReadVerifyFailure") -> None:
    assert r["ok"] is False and r["errors"] >= 1
    assert r["problems"][0]["area"] == "tree" and error in r["problems"][0]["message"]


def _integrity_lost_write(r: Body, run: Run) -> None:
    _integrity_damaged(r, run, "ReadLostFlushVerifyFailure")


def _logs_ok(r: Body, run: Run) -> None:
    assert r["ok"] is True and r["counts"]["error"] == 0
    assert (r["first_generation"], r["last_generation"]) == (1, 3)


def _logs_problem(check_name: str, error: str, code: int) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["ok"] is False and r["counts"]["error"] == 1
        (problem,) = [p for p in r["problems"] if p["severity"] == "error"]
        assert (problem["check"], problem["error"], problem["code"]) == (check_name, error, code)
        assert problem["generation"] == 2 and problem["file_name"] == "edb00000002.log"

    return check


def _logs_torn(r: Body, run: Run) -> None:
    assert r["ok"] is True and r["counts"]["error"] == 0
    assert [(p["severity"], p["check"]) for p in r["problems"]] == [("info", "torn-tail")]


def _removable(r: Body, run: Run) -> None:
    assert r["opened_for_this"] is True and r["directory"] == str(run.dir)
    assert r["keep_from_file"] == generation_log_name(r["keep_from"])
    assert isinstance(r["not_needed_for_recovery"], list) and r["covered_by_backup"] == []


def _removable_backed_up(r: Body, run: Run) -> None:
    assert r["opened_for_this"] is True and r["recovery_replayed"] is None
    assert r["keep_from_file"] == generation_log_name(r["keep_from"])
    assert all(g["generation"] < r["keep_from"] for g in r["not_needed_for_recovery"])


def _removed_nothing(r: Body, run: Run) -> None:
    assert r["mode"] == "safe" and r["dry_run"] is False
    assert r["removed"] == [] and r["bytes"] == 0 and not r["backed_up_through"]


def _removed_backed_up(r: Body, run: Run) -> None:
    assert r["mode"] == "safe" and r["removed"], r
    assert r["backed_up_through"] >= max(r["removed"])
    for generation in r["removed"]:
        assert not (run.dir / generation_log_name(generation)).exists()


def _status_ok(r: Body, run: Run) -> None:
    assert r["warnings"] == [] and r["open_by_pid"] is None
    (db,) = r["databases"]
    assert db["file"] == "main.edb" and db["clean"] is True
    assert r["log_generations"] == [1, 3] and r["log_files"] == 3


def _status_warns(*fragments: str) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["open_by_pid"] is None and r["warnings"]
        text = " ".join(r["warnings"])
        for fragment in fragments:
            assert fragment in text, text

    return check


def _status_open(r: Body, run: Run) -> None:
    assert r["open_by_pid"] == run.holder_pid and r["warnings"] == []


def _counters_opened(replayed: bool) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["opened_for_this"] is True and r["live"] is False
        assert (r["recovery_replayed"] or 0) > 0 if replayed else not r["recovery_replayed"]
        assert r["counters"]["databases"] is not None

    return check


def _counters_live(r: Body, run: Run) -> None:
    assert r["live"] is True and r["opened_for_this"] is False
    assert r["recovery_replayed"] is None and "control_requests" in r["counters"]


def _events_listed(r: Body, run: Run) -> None:
    assert r["exists"] is True and r["total"] == r["shown"] > 0
    assert r["events"][0]["name"] and r["filters"]["level"] is None


def _backup_offline(r: Body, run: Run) -> None:
    dest = run.work / "bk"
    assert r["path"] == str(dest) and r["kind"] == "full" and r["offline"] is True
    assert r["logs"] == "none" and (r["generation_low"], r["generation_high"]) == (0, 0)
    assert [f["name"] for f in r["files"]] == ["main.edb"] and (dest / "manifest.json").exists()
    assert not Path(f"{dest}.partial").exists()


def _backup_online(r: Body, run: Run) -> None:
    dest = run.work / "bk"
    assert r["offline"] is False and r["kind"] == "full" and r["logs"] == "included"
    assert r["session"] is not None and (dest / "manifest.json").exists()
    assert any(f["kind"] == "log" for f in r["files"])


def _nothing_at(*names: str) -> Check:
    def check(r: Body, run: Run) -> None:
        for name in names:
            assert not (run.work / name).exists(), name

    return check


def _nothing_at_dir(*names: str) -> Check:
    def check(r: Body, run: Run) -> None:
        for name in names:
            assert not (run.dir / name).exists(), name
        assert run.after == run.before  # a refused compaction leaves the file as it was

    return check


def _checkpoint_locked(r: Body, run: Run) -> None:
    if run.lock_mode == "chmod":  # unreadable: the error names the file (exit 4)
        assert r["name"] == "FileAccessDenied" and r["path"] == str(run.dir / "edb.chk")
    else:  # chattr +i: root still reads it
        _checkpoint(r, run)


def _verified(r: Body, run: Run) -> None:
    assert r["ok"] is True and r["problems"] == [] and r["kind"] == "full"
    assert all(f["status"] == "ok" for f in r["files"])


def _verify_finds_damage(r: Body, run: Run) -> None:
    assert r["ok"] is False
    assert any(p["file"].endswith("main.edb") for p in r["problems"])
    assert {f["name"]: f["status"] for f in r["files"]}["main.edb"] == "damaged"


def _restore_planned(r: Body, run: Run) -> None:
    assert r["executed"] is False and r["plan"]["target"] == str(run.work / "restored")
    assert r["plan"]["databases"] == ["main"] and r["plan"]["sets"][0]["kind"] == "full"
    assert not (run.work / "restored").exists()


def _restored(r: Body, run: Run) -> None:
    target = run.work / "restored"
    assert r["executed"] is True and r["plan"]["target"] == str(target)
    assert _header_state(target) == "clean"
    assert not Path(f"{target}.restoring").exists()


def _restored_with_logs_from(r: Body, run: Run) -> None:
    assert r["plan"]["surviving_logs"], "the foreign directory was silently ignored"


def _compacted(r: Body, run: Run) -> None:
    assert r["entries"] >= ROWS and r["pages_after"] <= r["pages_before"]
    assert r["integrity"]["ok"] is True and not r["kept_original"]


def _repair_report(lost: bool, dirty: bool = False) -> Check:
    def check(r: Body, run: Run) -> None:
        assert r["applied"] is False and r["data_lost"] is lost and r["was_dirty"] is dirty
        assert bool(r["damaged_pages"]) is (lost and not dirty)

    return check


def _repaired(r: Body, run: Run) -> None:
    assert r["applied"] is True and r["data_lost"] is True and r["integrity_ok"] is True
    assert r["damaged_pages"] and Path(r["kept_damaged"]).exists()
    assert r["moved_logs_to"] is not None and not (run.dir / "edb.chk").exists()


def _exported(r: Body, run: Run) -> None:
    out = run.work / "t.jsonl"
    assert r["rows"] == ROWS and r["table"] == "t" and r["format"] == "jsonl"
    assert r["output"] == str(out) and len(out.read_text().splitlines()) == ROWS
    assert json.loads(out.read_text().splitlines()[0]) == {"id": 0, "v": "000000" * 40}


def _imported(r: Body, run: Run) -> None:
    assert (r["rows"], r["inserted"], r["failed"]) == (IMPORT_ROWS, IMPORT_ROWS, 0)
    assert r["failures"] == []


def _import_duplicates(r: Body, run: Run) -> None:
    assert r["inserted"] == 0 and r["failed"] == IMPORT_ROWS
    assert [f["line"] for f in r["failures"]] == list(range(1, IMPORT_ROWS + 1))


def _duplicate_rows(run: Run) -> None:
    lines = [json.dumps({"id": i, "v": "dup"}) for i in range(IMPORT_ROWS)]
    (run.work / "rows.jsonl").write_text("\n".join(lines) + "\n")


def _recovered_despite_lock(r: Body, run: Run) -> None:
    # The checkpoint file is only a hint (design D6): recovery goes by the database headers,
    # and a checkpoint file that cannot be written is back-pressure, not an error.
    assert r["replayed"] > 0 and r["data_loss"] is None
    assert _header_state(run.dir) == "clean"
    assert run.before["edb.chk"] == run.after["edb.chk"]
    if run.lock_mode == "chmod":
        assert any("checkpoint file ignored" in note for note in r["notes"])
    assert "checkpoint_file_write_failed" in _event_names(run.dir)


def _diagnose_locked(r: Body, run: Run) -> None:
    assert r["verdict"] == "recoverable"
    if run.lock_mode == "chmod":
        assert r["checkpoint"]["status"] == "damaged" and r["checkpoint"]["safe_because"]
    else:
        assert r["checkpoint"]["status"] == "valid"


def _usage(r: Body, run: Run) -> None:
    assert r["category"] == "usage" and r["exit_code"] == 2


E_DIRTY = ("DatabaseDirtyShutdown", -550)
E_IN_USE = ("InstanceNameInUse", -1086)
E_PAGE = ("ReadVerifyFailure", -1018)
E_LOST = ("ReadLostFlushVerifyFailure", -1119)
E_MISSING = ("RequiredLogFilesMissing", -543)
E_CORRUPT = ("LogFileCorrupt", -501)
RO = True  # read-only: nothing under {dir} may change

# fmt: off
CASES: list[Case] = [
    # ---- clean: every command once
    Case("clean", "dump-header", "dump header {db}", 0, None, RO, _clean_header),
    Case("clean", "dump-checkpoint", "dump checkpoint {chk}", 0, None, RO, _checkpoint),
    Case("clean", "dump-logs", "dump logs {dir}", 0, None, RO, _dump_logs_clean),
    Case("clean", "diagnose", "diagnose {dir}", 0, None, RO, _verdict("clean")),
    Case("clean", "recover", "recover {dir}", 0, None, False, _recovered(False)),
    Case("clean", "checksum", "checksum {dir}", 0, None, RO, _checksum_ok),
    Case("clean", "integrity", "integrity {db}", 0, None, RO, _integrity_ok),
    Case("clean", "logs-verify", "logs verify {dir}", 0, None, RO, _logs_ok),
    Case("clean", "logs-removable", "logs removable {dir}", 0, None, False, _removable),
    Case("clean", "logs-remove-safe", "logs remove {dir} --safe", 0, None, False,
         _removed_nothing),
    Case("clean", "status", "status {dir}", 0, None, RO, _status_ok),
    Case("clean", "counters", "counters {dir}", 0, None, False, _counters_opened(False)),
    Case("clean", "events", "events {dir}", 0, None, RO, _events_listed),
    Case("clean", "backup-offline", "backup {dir} --to {work}/bk", 0, None, RO, _backup_offline),
    Case("clean", "compact", "compact {db}", 0, None, False, _compacted),
    Case("clean", "repair-report", "repair {db}", 0, None, RO, _repair_report(False)),
    Case("clean", "export", "export {db} t --output {work}/t.jsonl", 0, None, RO, _exported),
    Case("clean", "import", "import {db} t {work}/rows.jsonl", 0, None, False, _imported,
         prepare=_import_file),
    Case("clean", "import-duplicates", "import {db} t {work}/rows.jsonl", 1, None, False,
         _import_duplicates, prepare=_duplicate_rows),
    Case("clean", "recover-into-itself", "recover {dir} --into {dir}", 2, None, RO, _usage),
    # ---- dirty: crashed after the commits
    Case("dirty", "dump-header", "dump header {db}", 0, None, RO, _dirty_header),
    Case("dirty", "diagnose", "diagnose {dir}", 0, None, RO,
         _verdict("recoverable", "soft recovery will succeed from generation 1")),
    Case("dirty", "recover", "recover {dir}", 0, None, False, _recovered(True)),
    Case("dirty", "recover-into", "recover {dir} --into {work}/copy", 0, None, RO,
         _recovered_into),
    Case("dirty", "status", "status {dir}", 1, None, RO,
         _status_warns("was not shut down cleanly", "jetstore recover")),
    Case("dirty", "counters", "counters {dir}", 0, None, False, _counters_opened(True)),
    Case("dirty", "integrity", "integrity {db}", 3, E_DIRTY, RO),
    Case("dirty", "backup-offline", "backup {dir} --to {work}/bk", 3, E_DIRTY, RO,
         _nothing_at("bk", "bk.partial")),
    Case("dirty", "backup-recover", "backup {dir} --to {work}/bk --recover", 0, None, False,
         _backup_offline),
    Case("dirty", "compact", "compact {db}", 3, E_DIRTY, RO),
    Case("dirty", "export", "export {db} t --output {work}/t.jsonl", 3, E_DIRTY, RO,
         _nothing_at("t.jsonl", "t.jsonl.partial")),
    Case("dirty", "repair-report", "repair {db}", 1, None, RO, _repair_report(True, dirty=True)),
    Case("dirty", "import", "import {db} t {work}/rows.jsonl", 0, None, False, _imported,
         prepare=_import_file),
    # ---- missing log: closed generation 2 deleted
    Case("missing_log", "dump-logs", "dump logs {dir}", 1, None, RO, _dump_logs_missing),
    Case("missing_log", "logs-verify", "logs verify {dir}", 1, None, RO,
         _logs_problem("missing", "MissingLogFile", -528)),
    Case("missing_log", "diagnose", "diagnose {dir}", 1, None, RO,
         _verdict("data-loss", "generation 2 missing (edb00000002.log)",
                  error="RequiredLogFilesMissing")),
    Case("missing_log", "checksum", "checksum {dir}", 0, None, RO, _checksum_missing_generation),
    Case("missing_log", "recover", "recover {dir}", 3, E_MISSING),
    Case("missing_log", "recover-data-loss", "recover {dir} --accept-data-loss", 0, None, False,
         _recovered_with_loss),
    Case("missing_log", "logs-removable", "logs removable {dir}", 3, E_MISSING),
    Case("missing_log", "counters", "counters {dir}", 3, E_MISSING),
    Case("missing_log", "status", "status {dir}", 1, None, RO,
         _status_warns("was not shut down cleanly")),
    # ---- corrupt page: a byte flipped in a leaf page of a clean database
    Case("corrupt_page", "checksum", "checksum {dir}", 1, None, RO,
         _checksum_finds("ReadVerifyFailure", -1018, "page ")),
    Case("corrupt_page", "integrity", "integrity {db}", 1, None, RO, _integrity_damaged),
    Case("corrupt_page", "diagnose", "diagnose {dir}", 0, None, RO, _verdict("clean")),
    Case("corrupt_page", "dump-header", "dump header {db}", 0, None, RO, _clean_header),
    Case("corrupt_page", "repair-report", "repair {db}", 1, None, RO, _repair_report(True)),
    Case("corrupt_page", "repair-apply", "repair {db} --accept-data-loss", 0, None, False,
         _repaired),
    Case("corrupt_page", "compact", "compact {db}", 1, E_PAGE, False,
         _nothing_at_dir("main.edb.compacting")),
    Case("corrupt_page", "export", "export {db} t --output {work}/t.jsonl", 1, E_PAGE, RO,
         _nothing_at("t.jsonl")),
    Case("corrupt_page", "backup-offline", "backup {dir} --to {work}/bk", 1, E_PAGE, RO,
         _nothing_at("bk", "bk.partial")),
    # ---- lost write: a leaf replaced by another valid image of itself (D12)
    Case("lost_write", "checksum", "checksum {dir}", 1, None, RO,
         _checksum_finds("ReadLostFlushVerifyFailure", -1119, "page ")),
    Case("lost_write", "integrity", "integrity {db}", 1, None, RO, _integrity_lost_write),
    Case("lost_write", "repair-report", "repair {db}", 1, None, RO, _repair_report(True)),
    Case("lost_write", "compact", "compact {db}", 1, E_LOST, False,
         _nothing_at_dir("main.edb.compacting")),
    Case("lost_write", "export", "export {db} t --output {work}/t.jsonl", 1, E_LOST, RO,
         _nothing_at("t.jsonl")),
    Case("lost_write", "backup-offline", "backup {dir} --to {work}/bk", 1, E_LOST, RO,
         _nothing_at("bk", "bk.partial")),
    # ---- torn tail: garbage past the last frame of the newest log (normal after a crash)
    Case("torn_tail", "logs-verify", "logs verify {dir}", 0, None, RO, _logs_torn),
    Case("torn_tail", "dump-logs", "dump logs {dir}", 0, None, RO, _dump_logs_torn),
    Case("torn_tail", "diagnose", "diagnose {dir}", 0, None, RO,
         _verdict("recoverable", "torn tail at 00000003:")),
    Case("torn_tail", "checksum", "checksum {dir}", 0, None, RO, _checksum_torn),
    Case("torn_tail", "recover", "recover {dir}", 0, None, False, _recovered(True, torn=True)),
    # ---- corrupt closed log: a byte flipped in the first frame of generation 2
    Case("corrupt_log", "logs-verify", "logs verify {dir}", 1, None, RO,
         _logs_problem("frame", "LogFileCorrupt", -501)),
    Case("corrupt_log", "dump-logs", "dump logs {dir}", 1, None, RO, _dump_logs_corrupt),
    Case("corrupt_log", "checksum", "checksum {dir}", 1, None, RO,
         _checksum_finds("LogFileCorrupt", -501, "generation 2, offset 0x1000")),
    Case("corrupt_log", "diagnose", "diagnose {dir}", 1, None, RO,
         _verdict("data-loss", "the log is damaged at 00000002:00001000",
                  error="LogFileCorrupt")),
    Case("corrupt_log", "recover", "recover {dir}", 1, E_CORRUPT),
    Case("corrupt_log", "recover-into", "recover {dir} --into {work}/copy", 1, E_CORRUPT, RO),
    Case("corrupt_log", "recover-data-loss", "recover {dir} --accept-data-loss", 0, None, False,
         _recovered_with_loss),
    # ---- foreign log: generation 2 of another instance
    Case("foreign_log", "logs-verify", "logs verify {dir}", 1, None, RO,
         _logs_problem("signature", "BadLogSignature", -530)),
    Case("foreign_log", "diagnose", "diagnose {dir}", 1, None, RO,
         _verdict("data-loss", "edb00000002.log", error="BadLogSignature")),
    Case("foreign_log", "checksum", "checksum {dir}", 1, None, RO,
         _checksum_finds("BadLogSignature", -530, "generation 2")),
    Case("foreign_log", "recover", "recover {dir}", 3, ("BadLogSignature", -530)),
    # ---- locked checkpoint (a dirty instance): exit codes by lock mode where they differ
    Case("locked_checkpoint", "dump-checkpoint", "dump checkpoint {chk}",
         {"chattr": 0, "chmod": 4}, None, RO, _checkpoint_locked),
    Case("locked_checkpoint", "diagnose", "diagnose {dir}", 0, None, RO, _diagnose_locked),
    Case("locked_checkpoint", "status", "status {dir}", 1, None, RO,
         _status_warns("was not shut down cleanly")),
    Case("locked_checkpoint", "recover", "recover {dir}", 0, None, False,
         _recovered_despite_lock),
    Case("locked_checkpoint", "counters", "counters {dir}", 0, None, False,
         _counters_opened(True)),
    # ---- open elsewhere: a child process holds the instance (control socket on)
    Case("open_elsewhere", "status", "status {dir}", 0, None, RO, _status_open),
    Case("open_elsewhere", "diagnose", "diagnose {dir}", 3, None, RO, _diagnose_in_use),
    Case("open_elsewhere", "checksum", "checksum {dir}", 0, None, RO, _checksum_open),
    Case("open_elsewhere", "counters-live", "counters {dir}", 0, None, False, _counters_live),
    Case("open_elsewhere", "backup-online", "backup {dir} --to {work}/bk", 0, None, False,
         _backup_online),
    Case("open_elsewhere", "recover", "recover {dir}", 3, E_IN_USE, RO),
    Case("open_elsewhere", "recover-into", "recover {dir} --into {work}/copy", 3, E_IN_USE, RO,
         _nothing_at("copy")),
    Case("open_elsewhere", "logs-removable", "logs removable {dir}", 3, E_IN_USE, RO),
    Case("open_elsewhere", "logs-remove-safe", "logs remove {dir} --safe", 3, E_IN_USE, RO),
    Case("open_elsewhere", "integrity", "integrity {db}", 3, E_IN_USE, RO),
    Case("open_elsewhere", "compact", "compact {db}", 3, E_IN_USE, RO),
    Case("open_elsewhere", "repair-apply", "repair {db} --accept-data-loss", 3, E_IN_USE, RO),
    Case("open_elsewhere", "export", "export {db} t --output {work}/t.jsonl", 3, E_IN_USE, RO),
    Case("open_elsewhere", "import", "import {db} t {work}/rows.jsonl", 3, E_IN_USE, RO,
         prepare=_import_file),
    Case("open_elsewhere", "restore-onto-it", "restore {work}/set --to {dir}", 3,
         ("FileAccessDenied", -1032), RO, prepare=_copy_backup_set),
    # ---- backed up: a full online backup was taken, so the logs it holds may go
    Case("backed_up", "logs-removable", "logs removable {dir}", 0, None, False,
         _removable_backed_up),
    Case("backed_up", "logs-remove-safe", "logs remove {dir} --safe", 0, None, False,
         _removed_backed_up),
    # ---- backup sets ({dir} is the set)
    Case("backup_set", "verify-backup", "verify-backup {dir}", 0, None, RO, _verified),
    Case("backup_set", "restore-dry-run", "restore {dir} --to {work}/restored --dry-run", 0,
         None, RO, _restore_planned),
    Case("backup_set", "restore", "restore {dir} --to {work}/restored", 0, None, RO, _restored),
    Case("backup_set", "restore-logs-from-foreign",
         "restore {dir} --to {work}/restored --logs-from {work}/foreign", 3,
         ("GivenLogFileHasBadSignature", -555), RO, prepare=_foreign_instance),
    Case("damaged_set", "verify-backup", "verify-backup {dir}", 1, None, RO,
         _verify_finds_damage),
    Case("damaged_set", "restore", "restore {dir} --to {work}/restored", 1, E_PAGE, RO,
         _nothing_at("restored", "restored.restoring")),
    # ---- no instance
    Case("missing", "diagnose", "diagnose {dir}", 4, ("FileNotFound", -1811)),
    Case("missing", "logs-removable", "logs removable {dir}", 4, ("FileNotFound", -1811)),
    Case("not_instance", "recover", "recover {dir}", 2, ("InvalidPath", -1023), RO),
    Case("not_instance", "status-bad-option", "status {dir} --no-such-option", 2, None, RO,
         _usage),
]
# fmt: on


# --------------------------------------------------------------------------- running


def _argv(case: Case, run: Run) -> list[str]:
    fill = {
        "dir": run.dir,
        "db": run.dir / "main.edb",
        "chk": run.dir / "edb.chk",
        "work": run.work,
    }
    return [str(JETSTORE), *(part.format(**fill) for part in case.args.split()), "--json"]


def _execute(
    case: Case, index: int, root: Path, templates: dict[str, Path], mode: str | None
) -> Run:
    base = root / f"c{index:03d}"  # short: the control socket's path must fit in sun_path
    work = base / "w"
    work.mkdir(parents=True)
    run = Run(dir=base / "i", work=work, templates=templates, lock_mode=mode)
    if case.state == "not_instance":
        run.dir.mkdir()
        (run.dir / "notes.txt").write_text("not an instance\n")
    elif case.state != "missing":
        shutil.copytree(templates[case.state], run.dir)
    if case.prepare is not None:
        case.prepare(run)
    run.argv = _argv(case, run)
    with contextlib.ExitStack() as stack:
        if case.state == "open_elsewhere":
            run.holder_pid = stack.enter_context(held_open(run.dir))
        run.before = snapshot(run.dir) if run.dir.exists() else {}
        locked = run.dir / "edb.chk" if case.state == "locked_checkpoint" else None
        if locked is not None:
            assert mode is not None
            _set_lock(locked, mode, True)
        try:
            started = time.monotonic()
            done = subprocess.run(run.argv, capture_output=True, text=True, timeout=120)
            run.seconds = time.monotonic() - started
        finally:
            if locked is not None:  # before hashing (a chmod 000 file is unreadable) or cleanup
                _set_lock(locked, str(mode), False)
        run.returncode, run.stdout, run.stderr = done.returncode, done.stdout, done.stderr
        run.after = snapshot(run.dir) if run.dir.exists() else {}
    return run


def _selected(session: pytest.Session) -> set[str]:
    ids: set[str] = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("case"), Case):
            ids.add(callspec.params["case"].id)
    return ids


@dataclass
class Outcomes:
    runs: dict[str, Run | BaseException]
    lock_mode: str | None
    lock_reason: str
    seconds: float


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcomes]:
    if not JETSTORE.exists():
        pytest.skip(f"the jetstore entry point is not installed next to {sys.executable}")
    templates = build_templates(tmp_path_factory.mktemp("e2e-templates"))
    mode, reason = lock_mode(templates["clean"].parent)
    wanted = _selected(request.session)
    todo = [
        (index, case)
        for index, case in enumerate(CASES)
        if case.id in wanted and not (case.state == "locked_checkpoint" and mode is None)
    ]
    root = Path(tempfile.mkdtemp(prefix="jse2e-"))
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = {
                case.id: pool.submit(_execute, case, index, root, templates, mode)
                for index, case in todo
            }
            runs: dict[str, Run | BaseException] = {}
            for name, future in futures.items():
                try:
                    runs[name] = future.result()
                except Exception as exc:  # reported by that case's test, not by all of them
                    runs[name] = exc
        yield Outcomes(runs, mode, reason, time.monotonic() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _diagnostics(run: Run) -> str:
    command = " ".join(run.argv)
    return f"\n$ {command}\nexit {run.returncode}\nstdout: {run.stdout}\nstderr: {run.stderr}"


def _document(run: Run) -> dict[str, Any]:
    """The envelope: exactly one JSON object, alone on stdout."""
    text = run.stdout.strip()
    assert text and "\n" not in text, f"not exactly one line of JSON{_diagnostics(run)}"
    document = json.loads(text)
    assert isinstance(document, dict)
    assert document["schema"] == 1
    assert document["ok"] is (run.returncode == 0), _diagnostics(run)
    assert set(document) in (
        {"schema", "ok", "command", "result"},
        {"schema", "ok", "command", "error"},
    )
    return document


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_entry_point(case: Case, outcomes: Outcomes) -> None:
    if case.state == "locked_checkpoint" and outcomes.lock_mode is None:
        pytest.skip(f"cannot lock edb.chk: {outcomes.lock_reason}")
    run = outcomes.runs[case.id]
    if isinstance(run, BaseException):
        raise run
    document = _document(run)
    expected = case.exit if isinstance(case.exit, int) else case.exit[str(run.lock_mode)]
    assert run.returncode == expected, _diagnostics(run)
    assert document["command"] == case.command
    if case.error is not None or (expected >= 2 and "error" in document):
        assert "error" in document, _diagnostics(run)
        body = document["error"]
        assert body["exit_code"] == run.returncode
        if case.error is not None:
            assert (body["name"], body["code"]) == case.error, _diagnostics(run)
            assert body["unsigned"] == case.error[1] % (1 << 32)
            assert body["hex"] == f"0x{case.error[1] % (1 << 32):08x}"
            assert body["message"] and body["category"]
    else:
        assert "result" in document, _diagnostics(run)
        body = document["result"]
    if case.read_only:
        assert run.after == run.before, "a read-only command changed files"
    if case.check is not None:
        case.check(body, run)


def test_matrix_runs_in_budget(outcomes: Outcomes) -> None:
    """The whole matrix (one child process per case, a few at a time) stays quick."""
    seconds = [run.seconds for run in outcomes.runs.values() if isinstance(run, Run)]
    slowest = max(seconds, default=0.0)
    assert slowest < 60, slowest
    assert outcomes.seconds < 300, outcomes.seconds
