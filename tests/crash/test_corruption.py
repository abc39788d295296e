"""Damage detection (issue 6 item 5): every damaged byte is a typed error, never a crash, a hang
or a silently wrong answer.

Two reference instances are built once per module (page size 4 KiB, 64 KiB logs, a table with
a secondary index and long values, a few thousand rows):

- ``clean``: closed cleanly, so everything is in the page file. An early copy of ``main.edb``
  (taken after the first checkpoint, before more commits and checkpoints reused pages) is kept
  for the lost-write cases.
- ``crashed``: the same, then a tail of small transactions (each also inserting one marker row)
  spanning several log generations, then ``Instance.simulate_crash()``: recovery must replay
  the logs.

Each case copies a reference directory, damages it, then (in a forked worker, with an alarm as
the hang guard) runs ``verify_logs`` when asked and opens the instance, reads everything (every
table by primary key and by each index, long values included) and compares a digest of what
was read with the oracle: the full content, or for the crashed variant the content after
exactly k tail transactions (k = the number of marker rows read). The cases:

1. one seeded bit flipped in every page of the database (``make test``: every page of the
   clean variant, a sample of the crashed one; ``make soak``: every page of both). A page the
   durable tree or the free-list chain reaches must be a ``JetError`` naming the page; a free
   page must read back exactly the original content. One header copy damaged is survived and
   repaired (event 132); both damaged is refused.
2. a zeroed 512-byte sector inside a reachable page, two pages swapped (misdirected write),
   a page replaced by an older copy of itself (a lost write: every one is
   `ReadLostFlushVerifyFailure` naming the page, on read, by the checksum tool and by the
   integrity check, through the parent's reference to the image it was written with, D12).
3. one seeded bit flipped in every 512-byte block of the frame area of each log generation
   (crashed variant): ``verify_logs`` reports an error, or a torn tail when the block lies in
   the newest generation's last flush region; ``jetstore.open`` raises a ``JetError`` or, for
   the torn tail only, recovers exactly a committed prefix. Bits of the checkpoint file: one
   damaged copy is survived, both damaged means recovery from the database headers (D6).

The offline tools see every damaged copy before anything opens it: ``checksum_path`` (the
library of ``jetstore checksum``) on the instance directory, and, for swapped pages and zeroed
sectors, ``check_integrity`` on ``main.edb``. Every damage the engine detects (and every
flipped page, free ones included) must be reported with its location: the page number (a
damaged page, exactly that one; a page past the header's page count as "info"), the header
or checkpoint-file copy, the log generation and the offset of the damaged frame (a torn tail
as a note at that frame, not an error; damage in a generation recovery no longer reads as a
warning, as `jetstore logs verify` reports it). A page swapped with a blank one, or left all
zeros by a zeroed sector, looks unused on its own: both tools name it through the reference
that reaches it (D12). The reference copies must checksum clean.

Every test prints a summary (damaged, detected, missed). Reproducing: ``JETSTORE_SEED=<n>``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import struct
import tempfile
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import jetstore
from jetstore.errors import JetError
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.dbheader import decode_db_header
from jetstore.format.filenames import CHECKPOINT_FILE, CURRENT_LOG, parse_generation_log_name
from jetstore.format.logframe import decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.page import decode_page
from jetstore.format.positions import LogPosition
from jetstore.io.files import FileSystem
from jetstore.log.verify import verify_logs
from jetstore.pages.btree import iter_nodes
from jetstore.pages.pagefile import DatabaseFile
from jetstore.tools.checksum import checksum_path
from jetstore.tools.integrity import check_integrity

PAGE_SIZE = 4096
LOG_FILE_SIZE = 64 * 1024
SECTOR = 512
OPTIONS: dict[str, Any] = {
    "page_size": PAGE_SIZE,
    "log_file_size": LOG_FILE_SIZE,
    "checkpoint_interval": 3600.0,  # only the checkpoints the workload asks for
}
DB_FILE = "main.edb"
SEED = int(os.environ.get("JETSTORE_SEED", "20261207"))
WORKERS = 2
CASE_TIMEOUT = 60  # seconds for one open + read of a damaged copy: far above the ~0.05 s it takes

BASE_BATCHES = 30
BATCH_ROWS = 100
UPDATE_ROUNDS = 3
TAIL_TRANSACTIONS = 150
EXTRA_ROWS = 200  # written after reading, for the lost-write cases

PAGE_ERRORS = {"ReadVerifyFailure", "ReadPgnoVerifyFailure", "DatabaseCorrupted"}
SECTOR_ERRORS = PAGE_ERRORS | {"PageNotInitialized"}

Row = tuple[int, int, str, bytes]


# ----------------------------------------------------------------- the reference workload


def _row(key: int, version: int) -> Row:
    long = key % 50 == 0 or (version and key % 97 == 0)
    blob = bytes([(key + version) % 251]) * (3000 + version if long else 20 + key % 13)
    name = f"n{key}v{version}" * (key % 7 + 1)
    if key % 211 == 0:
        name = "long text " * 300 + str(version)  # a long text value (LV chunks too)
    return (key, (key + version) % 17, name, blob)


@dataclass
class Model:
    rows: dict[int, Row] = field(default_factory=dict)
    markers: list[int] = field(default_factory=list)

    def digest(self) -> str:
        by_pk = [self.rows[k] for k in sorted(self.rows)]
        by_grp = sorted(by_pk, key=lambda r: (r[1], r[0]))
        return _digest(by_pk, by_grp, sorted(self.markers))


def _digest(by_pk: list[Row], by_grp: list[Row], markers: list[int]) -> str:
    h = hashlib.sha256()
    h.update(repr((by_pk, by_grp, markers)).encode())
    return h.hexdigest()


def _put(txn: jetstore.Transaction, model: Model, row: Row, *, update: bool) -> None:
    record = {"id": row[0], "grp": row[1], "name": row[2], "blob": row[3]}
    table = txn.table("items")
    if update:
        table.upsert(record)
    else:
        table.insert(record)
    model.rows[row[0]] = row


@dataclass
class Reference:
    directory: str
    full: str  # digest of everything committed
    prefixes: list[str]  # crashed variant: prefixes[k] = digest after k tail transactions
    after_extra: str  # digest after the full content plus the extra rows
    tree_pages: set[int]
    chain_pages: set[int]
    file_pages: int
    old_db: bytes = b""  # clean variant: main.edb after the first checkpoint
    log_files: list[str] = field(default_factory=list)
    events: int = 0
    recovery_start: LogPosition = LogPosition.MIN
    page_count: int = 0  # the durable header's page count

    @property
    def reachable(self) -> set[int]:
        return self.tree_pages | self.chain_pages


def _build(directory: str, *, crash: bool) -> Reference:
    model = Model()
    instance = jetstore.open(directory, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table(
        "items",
        [("id", "int"), ("grp", "int"), ("name", "text"), ("blob", "bytes")],
        "id",
        indexes=[("by_grp", ("grp",))],
    )
    db.create_table("markers", [("id", "int")], "id")
    for batch in range(BASE_BATCHES):
        with db.transaction() as txn:
            for key in range(batch * BATCH_ROWS, (batch + 1) * BATCH_ROWS):
                _put(txn, model, _row(key, 0), update=False)
    instance.checkpoint()
    old_db = Path(directory, DB_FILE).read_bytes()
    rng = random.Random(SEED)
    total = BASE_BATCHES * BATCH_ROWS
    for version in range(1, UPDATE_ROUNDS + 1):
        with db.transaction() as txn:
            for key in rng.sample(sorted(model.rows), 300):
                _put(txn, model, _row(key, version), update=True)
            for key in rng.sample(sorted(model.rows), 40):
                txn.table("items").delete(key)
                del model.rows[key]
        instance.checkpoint()
    prefixes: list[str] = []
    if crash:
        prefixes.append(model.digest())
        for k in range(TAIL_TRANSACTIONS):
            with db.transaction() as txn:
                key = total + k
                _put(txn, model, _row(key, 7), update=False)
                victim = rng.choice(sorted(model.rows))
                _put(txn, model, _row(victim, 8 + k), update=True)
                txn.table("markers").insert({"id": k})
                model.markers.append(k)
            prefixes.append(model.digest())
        instance.simulate_crash()
    else:
        instance.close()
    full = model.digest()
    for key in range(EXTRA_ROWS):
        model.rows[100_000 + key] = _row(100_000 + key, 1)
    after_extra = model.digest()
    tree, chain, file_pages = _page_sets(os.path.join(directory, DB_FILE))
    logs = sorted(
        name
        for name in os.listdir(directory)
        if name == CURRENT_LOG or parse_generation_log_name(name) is not None
    )
    events = len(Path(directory, "events.jsonl").read_text().splitlines())
    # Where soft recovery starts (D6): the lower of the checkpoint file's and the header's.
    header = decode_db_header(Path(directory, DB_FILE).read_bytes()[:PAGE_SIZE])
    chk_path = os.path.join(directory, CHECKPOINT_FILE)
    state, _ = read_checkpoint_file(Path(chk_path).read_bytes(), path=chk_path)
    start = min(header.checkpoint_position, state.checkpoint_position)
    return Reference(
        directory,
        full,
        prefixes,
        after_extra,
        tree,
        chain,
        file_pages,
        old_db,
        logs,
        events,
        start,
        header.page_count,
    )


def _page_sets(path: str) -> tuple[set[int], set[int], int]:
    """(pages of the durable tree, pages of the free-list chain, pages in the file)."""
    db = DatabaseFile.open(FileSystem(), path, owner="corruption-test", cache_pages=16)
    try:
        tree = {node.pgno for node in iter_nodes(db, db.root()) if node.pgno is not None}
        chain: set[int] = set()
        pgno = db.header.freelist_pgno
        while pgno:
            chain.add(pgno)
            page = decode_page(pgno, db.read_raw_page(pgno))
            (pgno,) = struct.unpack_from("<Q", bytes(page.payload), 0)
    finally:
        db.close()
    return tree, chain, os.path.getsize(path) // PAGE_SIZE


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    root = tmp_path_factory.mktemp("corruption-refs")
    return {
        "clean": _build(str(root / "clean"), crash=False),
        "crashed": _build(str(root / "crashed"), crash=True),
    }


# ----------------------------------------------------------------- running one damaged copy

Damage = tuple[tuple[str, int, bytes], ...]  # (file name, offset, bytes written there)


@dataclass(frozen=True)
class Case:
    label: str
    damage: Damage
    verify: bool = False
    write_after: bool = False
    integrity: bool = False  # also run `check_integrity` on the damaged file (clean variant)


class _Hang(BaseException):
    pass


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Hang


def _read_all(directory: str) -> tuple[int, str]:
    with jetstore.open(directory, **OPTIONS) as instance:
        db = instance.database("main")
        with db.transaction() as txn:
            assert sorted(txn.table_names()) == ["items", "markers"], txn.table_names()
            items = txn.table("items")
            by_pk = [(r["id"], r["grp"], r["name"], r["blob"]) for r in items.scan()]
            by_grp = [(r["id"], r["grp"], r["name"], r["blob"]) for r in items.scan("by_grp")]
            markers = [r["id"] for r in txn.table("markers").scan()]
    return len(markers), _digest(by_pk, by_grp, markers)  # type: ignore[arg-type]


def _write_extra(directory: str) -> None:
    with jetstore.open(directory, **OPTIONS) as instance:
        db = instance.database("main")
        with db.transaction() as txn:
            for key in range(EXTRA_ROWS):
                row = _row(100_000 + key, 1)
                txn.table("items").insert(
                    {"id": row[0], "grp": row[1], "name": row[2], "blob": row[3]}
                )
        instance.checkpoint()


def _run_case(reference: str, case: Case, work_root: str) -> dict[str, Any]:
    """Runs in a forked worker: copy, damage, verify, open and read. Never raises."""
    out: dict[str, Any] = {"label": case.label}
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT)
    directory = tempfile.mkdtemp(dir=work_root)
    try:
        shutil.copytree(reference, directory, dirs_exist_ok=True)
        for name, offset, data in case.damage:
            with open(os.path.join(directory, name), "r+b") as f:
                f.seek(offset)
                f.write(data)
        # The offline tools see the damaged copy before anything (recovery) writes to it.
        out["checksum"] = _checksum_findings(directory)
        if case.integrity:
            out["integrity"] = _integrity_findings(os.path.join(directory, DB_FILE))
        if case.verify:
            result = verify_logs(FileSystem(), directory)
            out["verify_ok"] = result.ok
            out["verify_status"] = {g.file_name: g.status for g in result.generations}
        try:
            out["markers"], out["digest"] = _read_all(directory)
            out["outcome"] = "ok"
            events = Path(directory, "events.jsonl").read_text().splitlines()
            out["event_ids"] = [json.loads(line)["id"] for line in events]
            data = Path(directory, DB_FILE).read_bytes()
            seqs = [
                decode_db_header(data[c * PAGE_SIZE : (c + 1) * PAGE_SIZE], copy=c).header_seq
                for c in (0, 1)
            ]
            out["headers_equal"] = seqs[0] == seqs[1]
            if case.write_after:
                _write_extra(directory)
                out["markers_after"], out["digest_after"] = _read_all(directory)
        except JetError as exc:
            out["outcome"] = "jet"
            out["error"] = type(exc).__name__
            out["message"] = str(exc)
    except _Hang:
        out["outcome"] = "hang"
        out["message"] = traceback.format_exc()
    except BaseException:  # any other exception is the finding
        out["outcome"] = "other"
        out["message"] = traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        shutil.rmtree(directory, ignore_errors=True)
    return out


def _checksum_findings(directory: str) -> list[dict[str, Any]]:
    """What `jetstore checksum DIR` (`checksum_path`) reports on the instance directory."""
    try:
        report = checksum_path(directory)
    except JetError as exc:
        return [{"severity": "refused", "error": type(exc).__name__, "message": str(exc)}]
    return [
        {**problem.as_dict(), "file": os.path.basename(problem.file)} for problem in report.problems
    ]


def _integrity_findings(path: str) -> list[dict[str, Any]]:
    """The errors `check_integrity` reports on a (clean) database file."""
    try:
        report = check_integrity(path)
    except JetError as exc:
        return [{"area": "refused", "page": None, "message": f"{type(exc).__name__}: {exc}"}]
    return [
        {"area": p.area, "page": p.pgno, "message": p.message}
        for p in report.problems
        if p.severity == "error"
    ]


def _checksum_errors(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in result["checksum"] if f["severity"] == "error" and f["kind"] == kind]


def _checksum_page_problem(result: dict[str, Any], pgnos: set[int], page_count: int) -> str:
    """'' when the checksum tool reports exactly the damaged pages `pgnos` of main.edb as
    bad (a page at or past the header's page count, which no header reaches, as "info"),
    else what is wrong."""
    bad = {f["page"] for f in _checksum_errors(result, "database") if f["file"] == DB_FILE}
    beyond = {
        f["page"]
        for f in result["checksum"]
        if f["severity"] == "info" and f["kind"] == "database" and f["page"] is not None
    }
    expected = {p for p in pgnos if p < page_count}
    if bad != expected or not {p for p in pgnos if p >= page_count} <= beyond:
        return (
            f"checksum tool reports pages {sorted(bad)} as bad (beyond the end: "
            f"{sorted(beyond)}), expected {sorted(pgnos)}: {result['checksum'][:3]}"
        )
    return ""


def _checksum_copy_problem(result: dict[str, Any], kind: str, copies: set[int]) -> str:
    """'' when the checksum tool reports exactly copies `copies` of the database header
    (`kind` "database") or of the checkpoint file ("checkpoint") as bad."""
    bad = {f["copy"] for f in _checksum_errors(result, kind)}
    if bad != copies:
        return f"checksum tool reports {kind} copies {sorted(bad)} as bad, expected {copies}"
    return ""


def _run(reference: Reference, cases: list[Case], tmp_path: Path) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        futures = [
            pool.submit(_run_case, reference.directory, case, str(tmp_path)) for case in cases
        ]
        # The alarm in the worker is the hang guard; this is the backstop for a stuck worker.
        return [f.result(timeout=CASE_TIMEOUT * (len(cases) + 2)) for f in futures]


def _flip(directory: str, name: str, offset: int, bit: int) -> tuple[str, int, bytes]:
    with open(os.path.join(directory, name), "rb") as f:
        f.seek(offset)
        byte = f.read(1)[0]
    return (name, offset, bytes([byte ^ (1 << bit)]))


def _names_page(message: str, pgnos: set[int]) -> bool:
    return any(re.search(rf"\bpage {p}\b", message) for p in pgnos)


def _never_crash_or_hang(results: list[dict[str, Any]]) -> None:
    bad = [r for r in results if r["outcome"] in ("other", "hang")]
    assert not bad, "\n".join(f"{r['label']}: {r['outcome']}\n{r['message']}" for r in bad[:5])


def _sample(items: list[Any], count: int, rng: random.Random, exhaustive: bool) -> list[Any]:
    """All of `items` in the soak run, else `count` of them (seeded, in their order)."""
    if exhaustive or len(items) <= count:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), count))]


@pytest.fixture(
    params=[False, pytest.param(True, marks=[pytest.mark.soak, pytest.mark.timeout(7200)])],
    ids=["sample", "exhaustive"],
)
def exhaustive(request: pytest.FixtureRequest) -> bool:
    """False in `make test` (a seeded sample where the full set is slow); True in `make soak`."""
    return bool(request.param)


def _summary(title: str, rows: dict[str, Counter[str]]) -> None:
    print(f"\n[corruption] {title}")
    for kind, counts in rows.items():
        print(f"  {kind}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


# ----------------------------------------------------------------- 1. one bit in every page


def _page_flip_cases(ref: Reference, pages: list[int], seed: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for pgno in pages:
        bit = rng.randrange(PAGE_SIZE * 8)
        offset = pgno * PAGE_SIZE + bit // 8
        damage = (_flip(ref.directory, DB_FILE, offset, bit % 8),)
        cases.append(Case(f"page {pgno} bit {bit}", damage))
    return cases


def _check_page_flips(variant: str, ref: Reference, tmp_path: Path, pages: list[int]) -> None:
    cases = _page_flip_cases(ref, pages, SEED + pages[0])
    results = _run(ref, cases, tmp_path)
    _never_crash_or_hang(results)
    counts: dict[str, Counter[str]] = {
        "reachable": Counter(),
        "free": Counter(),
        "checksum tool": Counter(),
    }
    failures = []
    for pgno, result in zip(pages, results, strict=True):
        # Reachable or free, every flipped page is a bad page for the checksum tool.
        problem = _checksum_page_problem(result, {pgno}, ref.page_count)
        counts["checksum tool"]["located" if not problem else "NOT LOCATED"] += 1
        if problem:
            failures.append(f"{result['label']}: {problem}")
        if pgno in ref.reachable:
            kind = "reachable"
            if result["outcome"] == "jet":
                counts[kind]["detected"] += 1
                counts[kind][result["error"]] += 1
                if result["error"] not in PAGE_ERRORS or not _names_page(result["message"], {pgno}):
                    failures.append(f"{result['label']}: wrong error {result['message']}")
            else:
                counts[kind]["missed"] += 1
                same = result["digest"] == ref.full
                failures.append(f"{result['label']}: not detected (content intact: {same})")
        else:
            kind = "free"
            if result["outcome"] == "ok" and result["digest"] == ref.full:
                counts[kind]["read back intact"] += 1
            elif result["outcome"] == "jet":
                counts[kind]["refused"] += 1
                failures.append(f"{result['label']} (free page): {result['message']}")
            else:
                counts[kind]["WRONG ANSWER"] += 1
                failures.append(f"{result['label']} (free page): wrong content returned")
    _summary(f"{variant}: one bit flipped in {len(pages)} pages", counts)
    assert not failures, "\n".join(failures[:20])


def _data_pages(ref: Reference) -> list[int]:
    return list(range(2, ref.file_pages))


def test_reference_reads_back_exactly(refs: dict[str, Reference], tmp_path: Path) -> None:
    for variant, ref in refs.items():
        (result,) = _run(ref, [Case(f"{variant} undamaged", (), verify=True)], tmp_path)
        assert result["outcome"] == "ok", result
        assert result["digest"] == ref.full, variant
        assert result["verify_ok"], result
        assert not [f for f in result["checksum"] if f["severity"] == "error"], result["checksum"]
        assert ref.reachable and len(ref.reachable) < ref.file_pages - 2, "want free pages too"
        print(
            f"\n[corruption] {variant}: {ref.file_pages} pages ({len(ref.tree_pages)} tree, "
            f"{len(ref.chain_pages)} free-list chain, "
            f"{ref.file_pages - 2 - len(ref.reachable)} free), logs {ref.log_files}"
        )


def test_bit_flip_in_every_page_clean(refs: dict[str, Reference], tmp_path: Path) -> None:
    ref = refs["clean"]
    _check_page_flips("clean", ref, tmp_path, _data_pages(ref))


def test_bit_flip_in_pages_crashed(
    refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs["crashed"]
    pages = _sample(_data_pages(ref), 60, random.Random(SEED), exhaustive)
    _check_page_flips("crashed", ref, tmp_path, pages)


@pytest.mark.parametrize("variant", ["clean", "crashed"])
def test_one_header_copy_damaged_is_repaired(
    variant: str, refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs[variant]
    rng = random.Random(SEED + 1)
    bits = 256 if exhaustive else 8
    cases = []
    for copy in (0, 1):
        for _ in range(bits):
            bit = rng.randrange(PAGE_SIZE * 8)
            offset = copy * PAGE_SIZE + bit // 8
            damage = (_flip(ref.directory, DB_FILE, offset, bit % 8),)
            cases.append(Case(f"header copy {copy} bit {bit}", damage))
    results = _run(ref, cases, tmp_path)
    _never_crash_or_hang(results)
    for index, result in enumerate(results):
        copy = 0 if index < bits else 1
        assert not _checksum_copy_problem(result, "database", {copy}), (result["label"], result)
        assert result["outcome"] == "ok", result
        assert result["digest"] == ref.full, result["label"]
        assert result["headers_equal"], result["label"]
        # event 132: the damaged copy was rewritten from the good one
        assert 132 in result["event_ids"][ref.events :], result["label"]
    _summary(f"{variant}: one header copy damaged", {"header": Counter(survived=len(results))})


@pytest.mark.parametrize("variant", ["clean", "crashed"])
def test_both_header_copies_damaged_is_refused(
    variant: str, refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs[variant]
    rng = random.Random(SEED + 2)
    cases = []
    for _ in range(128 if exhaustive else 8):
        damage = []
        for copy in (0, 1):
            bit = rng.randrange(PAGE_SIZE * 8)
            damage.append(_flip(ref.directory, DB_FILE, copy * PAGE_SIZE + bit // 8, bit % 8))
        cases.append(Case(f"both header copies {damage[0][1]}/{damage[1][1]}", tuple(damage)))
    results = _run(ref, cases, tmp_path)
    _never_crash_or_hang(results)
    errors = Counter(r.get("error", "NOT REFUSED") for r in results)
    _summary(f"{variant}: both header copies damaged", {"refused": errors})
    assert all(r["outcome"] == "jet" for r in results), errors
    located = [(r["label"], _checksum_copy_problem(r, "database", {0, 1})) for r in results]
    assert not [x for x in located if x[1]], located


# ----------------------------------------------------------------- 2. sectors, swaps, lost writes


def test_zeroed_sector_in_a_page(
    refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs["clean"]
    rng = random.Random(SEED + 3)
    data = Path(ref.directory, DB_FILE).read_bytes()
    cases = []
    pages = _sample(sorted(ref.reachable), 30, rng, exhaustive)
    for pgno in pages:
        page = data[pgno * PAGE_SIZE : (pgno + 1) * PAGE_SIZE]
        nonzero = [
            s for s in range(PAGE_SIZE // SECTOR) if any(page[s * SECTOR : (s + 1) * SECTOR])
        ]
        sector = rng.choice(nonzero)
        offset = pgno * PAGE_SIZE + sector * SECTOR
        cases.append(
            Case(
                f"page {pgno} sector {sector} zeroed",
                ((DB_FILE, offset, bytes(SECTOR)),),
                integrity=True,
            )
        )
    results = _run(ref, cases, tmp_path)
    _never_crash_or_hang(results)
    counts: Counter[str] = Counter()
    failures = []
    for pgno, result in zip(pages, results, strict=True):
        # Both offline tools name the page: the checksum tool (bad checksum, or a page left all
        # zeros that a reference reaches, D12) and the integrity check (its tree walk).
        problem = _checksum_page_problem(result, {pgno}, ref.page_count)
        if problem:
            failures.append(f"{result['label']}: {problem}")
        counts["checksum tool located" if not problem else "checksum tool MISSED"] += 1
        by_integrity = {f["page"] for f in result["integrity"] if f["page"] is not None}
        if pgno not in by_integrity:
            failures.append(f"{result['label']}: check_integrity names {sorted(by_integrity)}")
        counts["check_integrity located" if pgno in by_integrity else "integrity MISSED"] += 1
        if result["outcome"] != "jet":
            counts["missed"] += 1
            failures.append(f"{result['label']}: not detected")
            continue
        counts[result["error"]] += 1
        if result["error"] not in SECTOR_ERRORS or not _names_page(result["message"], {pgno}):
            failures.append(f"{result['label']}: {result['message']}")
    _summary(f"clean: a zeroed sector in {len(pages)} reachable pages", {"sector": counts})
    assert not failures, "\n".join(failures[:20])


def test_swapped_pages_misdirected_write(
    refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs["clean"]
    rng = random.Random(SEED + 4)
    data = Path(ref.directory, DB_FILE).read_bytes()
    reachable = sorted(ref.reachable)
    free = sorted(set(range(2, ref.file_pages)) - ref.reachable)
    pairs = [tuple(sorted(rng.sample(reachable, 2))) for _ in range(300 if exhaustive else 20)]
    pairs += [(rng.choice(reachable), rng.choice(free)) for _ in range(60 if exhaustive else 5)]

    def page(p: int) -> bytes:
        return data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]

    cases = [
        Case(
            f"pages {a} and {b} swapped",
            ((DB_FILE, a * PAGE_SIZE, page(b)), (DB_FILE, b * PAGE_SIZE, page(a))),
            integrity=True,
        )
        for a, b in pairs
    ]
    results = _run(ref, cases, tmp_path)
    _never_crash_or_hang(results)
    counts: Counter[str] = Counter()
    failures = []
    for (a, b), result in zip(pairs, results, strict=True):
        named = {a, b} & ref.reachable
        # The checksum tool names every reachable page of the pair (the page number is in the
        # CRC; a blank page moved into the tree is named by the reference that reaches it,
        # D12). The integrity check names what its tree walk reaches (not below a damaged
        # branch).
        by_checksum = {f["page"] for f in _checksum_errors(result, "database")}
        by_integrity = {f["page"] for f in result["integrity"] if f["page"] is not None}
        if not named <= by_checksum or not named & by_integrity:
            failures.append(
                f"{result['label']}: the checksum tool names pages {sorted(by_checksum)}, "
                f"check_integrity pages {sorted(by_integrity)}, expected {sorted(named)}"
            )
        counts["checksum tool located"] += named <= by_checksum
        counts["check_integrity located"] += named <= by_integrity
        if result["outcome"] != "jet":
            counts["missed"] += 1
            failures.append(f"{result['label']}: not detected")
            continue
        counts[result["error"]] += 1
        if result["error"] not in {"ReadPgnoVerifyFailure", "ReadVerifyFailure"} or not (
            _names_page(result["message"], named)
        ):
            failures.append(f"{result['label']}: {result['message']}")
    _summary(f"clean: {len(pairs)} page pairs swapped", {"swap": counts})
    assert not failures, "\n".join(failures[:20])


def _lost_write_pages(ref: Reference) -> list[int]:
    """Reachable pages whose bytes changed since the early copy: a lost write there is old data
    that verifies (same page number, valid checksum)."""
    data = Path(ref.directory, DB_FILE).read_bytes()
    old = ref.old_db
    return [
        p
        for p in sorted(ref.reachable)
        if (p + 1) * PAGE_SIZE <= len(old)
        and old[p * PAGE_SIZE : (p + 1) * PAGE_SIZE] != data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
    ]


def test_lost_write_older_copy_of_a_page(refs: dict[str, Reference], tmp_path: Path) -> None:
    """A page replaced by an older valid copy of itself (same page number, valid CRC32C): the
    parent's reference (or the header's) names the image it was written with (D12), so the
    read, the checksum tool and the integrity check each name the page as a lost write."""
    ref = refs["clean"]
    pages = _lost_write_pages(ref)  # all of them (about 60): each case is cheap
    assert pages, "the workload must reuse pages after the early copy"
    assert set(pages) - ref.tree_pages, "the workload must also have a stale free-list page"
    old = ref.old_db
    cases = [
        Case(
            f"page {p} replaced by its older copy",
            ((DB_FILE, p * PAGE_SIZE, old[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]),),
            write_after=True,
            integrity=True,
        )
        for p in pages
    ]
    results = _run(ref, cases, tmp_path)
    _never_crash_or_hang(results)
    counts: Counter[str] = Counter()
    failures = []
    for pgno, result in zip(pages, results, strict=True):
        kind = "tree" if pgno in ref.tree_pages else "free-list"
        lost = [
            f
            for f in _checksum_errors(result, "database")
            if f["error"] == "ReadLostFlushVerifyFailure"
        ]
        if [f["page"] for f in lost] != [pgno]:
            failures.append(f"{result['label']}: the checksum tool reports {result['checksum']}")
        counts[f"{kind} checksum tool located"] += [f["page"] for f in lost] == [pgno]
        by_integrity = {
            f["page"] for f in result["integrity"] if "ReadLostFlushVerifyFailure" in f["message"]
        }
        if pgno not in by_integrity:
            failures.append(f"{result['label']}: check_integrity reports {result['integrity']}")
        counts[f"{kind} check_integrity located"] += pgno in by_integrity
        if result["outcome"] != "jet":
            intact = result["digest"] == ref.full and result["digest_after"] == ref.after_extra
            counts[f"{kind} {'not detected' if intact else 'SILENTLY WRONG'}"] += 1
            failures.append(f"{result['label']}: not detected on read")
            continue
        counts[f"{kind} detected {result['error']}"] += 1
        if result["error"] != "ReadLostFlushVerifyFailure" or not _names_page(
            result["message"], {pgno}
        ):
            failures.append(f"{result['label']}: {result['error']}: {result['message']}")
    _summary(f"clean: {len(pages)} lost writes (older copy of a page)", {"lost write": counts})
    assert not failures, "\n".join(failures[:20])


# ----------------------------------------------------------------- 3. logs and checkpoint file


@dataclass(frozen=True)
class LogLayout:
    """Where the frames of one log file are: CRC-covered byte ranges, the end of the valid
    frames, and (newest generation) where the last flush may start."""

    name: str
    generation: int
    covered: list[tuple[int, int]]
    end: int
    last_flush: int
    newest: bool


def _log_layouts(ref: Reference) -> list[LogLayout]:
    layouts = []
    for name in ref.log_files:
        data = Path(ref.directory, name).read_bytes()
        header = decode_log_header(data[:LOG_HEADER_SIZE], path=name)
        offset = header.data_start
        covered = []
        durable = offset
        while True:
            frame = decode_frame(data, offset, header.generation)
            if frame is None:
                break
            covered.append((frame.offset, frame.offset + 16 + len(frame.payload)))
            durable = frame.durable_before
            offset = frame.next_offset
        newest = name == CURRENT_LOG
        layouts.append(LogLayout(name, header.generation, covered, offset, durable, newest))
    return layouts


def _log_block_cases(ref: Reference, rng: random.Random) -> list[tuple[LogLayout, int, Case]]:
    cases = []
    for layout in _log_layouts(ref):
        for block in range(LOG_HEADER_SIZE, LOG_FILE_SIZE, SECTOR):
            bit = rng.randrange(SECTOR * 8)
            offset = block + bit // 8
            damage = (_flip(ref.directory, layout.name, offset, bit % 8),)
            label = f"{layout.name} offset {offset} bit {bit % 8}"
            cases.append((layout, offset, Case(label, damage, verify=True)))
    return cases


def test_bit_flip_in_log_blocks(
    refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs["crashed"]
    rng = random.Random(SEED + 6)
    every = _log_block_cases(ref, rng)
    # make test: every block of the generations recovery reads, a sample of the older ones
    needed = ref.recovery_start.generation
    chosen = [c for c in every if c[0].generation >= needed]
    chosen += _sample([c for c in every if c[0].generation < needed], 60, rng, exhaustive)
    results = _run(ref, [c[2] for c in chosen], tmp_path)
    _never_crash_or_hang(results)
    counts: dict[str, Counter[str]] = {
        "needed frames": Counter(),
        "frames before the recovery start": Counter(),
        "unused bytes (padding, beyond the end)": Counter(),
    }
    failures: list[str] = []
    for (layout, offset, case), result in zip(chosen, results, strict=True):
        failures += _check_log_flip(ref, layout, offset, case, result, counts)
    _summary(f"crashed: one bit flipped in {len(chosen)} log blocks", counts)
    assert not failures, "\n".join(failures[:20])


def _check_log_flip(
    ref: Reference,
    layout: LogLayout,
    offset: int,
    case: Case,
    result: dict[str, Any],
    counts: dict[str, Counter[str]],
) -> list[str]:
    failures = []
    in_frame = any(lo <= offset < hi for lo, hi in layout.covered)
    frame_end = next((hi for lo, hi in layout.covered if lo <= offset < hi), 0)
    status = result["verify_status"].get(layout.name)
    if not in_frame:
        # Frame padding (not checksummed) or beyond the end of the frames: nothing logged is
        # damaged, so the full content must come back (or the open may refuse, cautiously).
        c = counts["unused bytes (padding, beyond the end)"]
        if result["outcome"] == "ok":
            if result["digest"] != ref.full:
                c["WRONG ANSWER"] += 1
                failures.append(f"{case.label} (unused): wrong content")
            else:
                c["full content"] += 1
        else:
            c[f"open refused {result['error']}"] += 1
        c["verify reported an error"] += not result["verify_ok"]
        return failures
    before_start = LogPosition(layout.generation, frame_end) <= ref.recovery_start
    torn = layout.newest and offset >= layout.last_flush
    c = counts["frames before the recovery start" if before_start else "needed frames"]
    frame_start = next(lo for lo, hi in layout.covered if lo <= offset < hi)
    found = [
        f
        for f in result["checksum"]
        if f["kind"] == "log" and f["file"] == layout.name and f["generation"] == layout.generation
    ]
    errors = {f["offset"] for f in found if f["severity"] == "error"}
    warnings = {f["offset"] for f in found if f["severity"] == "warning"}
    noted = {f["offset"] for f in found}
    if not result["verify_ok"]:
        # Damage: the checksum tool reports the damaged frame, by generation and offset: an
        # error in a generation recovery reads, a warning in one it no longer reads (as
        # `logs verify` judges it; recovery reads whole generations from its start's).
        if layout.generation >= ref.recovery_start.generation:
            located = frame_start in errors
        else:
            located = frame_start in warnings and not errors
    else:
        # A torn tail (not damage): reported as such, at the frame where the log ends.
        located = frame_start in noted and not errors
    c["checksum tool located" if located else "checksum tool NOT LOCATED"] += 1
    if not located:
        failures.append(
            f"{case.label}: checksum tool findings for {layout.name} at offsets "
            f"{sorted(o for o in noted if o is not None)} (errors "
            f"{sorted(o for o in errors if o is not None)}), expected "
            f"the frame at {frame_start}: {found[:2]}"
        )
    if not result["verify_ok"]:
        c["verify error"] += 1
    elif torn and status == "torn-tail":
        c["verify torn-tail"] += 1
    else:
        c["verify MISSED"] += 1
        failures.append(f"{case.label}: verify_logs reports no error (status {status})")
    if result["outcome"] == "jet":
        c[f"open refused {result['error']}"] += 1
    elif result["digest"] == ref.full and before_start:
        # Soft recovery never reads what lies before its start (as ESE): nothing is lost.
        c["open: not read by recovery, full content"] += 1
    elif torn and result["digest"] == ref.prefixes[result["markers"]]:
        c["open: torn tail, committed prefix"] += 1
    elif result["digest"] == ref.full:
        c["open MISSED (full content recovered)"] += 1
        failures.append(f"{case.label}: open succeeded with the full content")
    else:
        c["open WRONG ANSWER"] += 1
        failures.append(f"{case.label}: open returned wrong content ({result['markers']})")
    return failures


def test_checkpoint_file_damage(
    refs: dict[str, Reference], tmp_path: Path, exhaustive: bool
) -> None:
    ref = refs["crashed"]
    rng = random.Random(SEED + 7)
    per_copy = 1024 if exhaustive else 24
    cases = []
    for copy in (0, 1):
        for _ in range(per_copy):
            bit = rng.randrange(4096 * 8)
            damage = (_flip(ref.directory, CHECKPOINT_FILE, copy * 4096 + bit // 8, bit % 8),)
            cases.append(Case(f"{CHECKPOINT_FILE} copy {copy} bit {bit}", damage))
    both = []
    for _ in range(64 if exhaustive else 6):
        damage = []
        for copy in (0, 1):
            bit = rng.randrange(4096 * 8)
            damage.append(_flip(ref.directory, CHECKPOINT_FILE, copy * 4096 + bit // 8, bit % 8))
        both.append(Case(f"{CHECKPOINT_FILE} both copies {damage}", tuple(damage)))
    results = _run(ref, cases + both, tmp_path)
    _never_crash_or_hang(results)
    failures = [
        f"{r['label']}: {r.get('message', 'wrong content')}"
        for r in results
        if r["outcome"] != "ok" or r["digest"] != ref.full
    ]
    for index, result in enumerate(results):
        copies = {index // per_copy} if index < len(cases) else {0, 1}
        problem = _checksum_copy_problem(result, "checkpoint", copies)
        if problem:
            failures.append(f"{result['label']}: {problem}")
    for result in results[len(cases) :]:
        if result["outcome"] == "ok" and 112 not in result["event_ids"][ref.events :]:
            failures.append(f"{result['label']}: no event 112 (checkpoint file ignored)")
    counts = Counter(
        "one copy" if i < len(cases) else "both copies (recovered from the headers)"
        for i, r in enumerate(results)
        if r["outcome"] == "ok" and r["digest"] == ref.full
    )
    _summary(f"crashed: {len(results)} damaged checkpoint files, survived", {"edb.chk": counts})
    assert not failures, "\n".join(failures[:20])
