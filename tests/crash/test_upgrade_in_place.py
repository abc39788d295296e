"""An instance upgraded in place, then crashed: an engine older than the DETACH_DATABASE and
ATTACH_DATABASE records wrote the first log generations, this engine the later ones, and
recovery reads across that boundary (`older_engine` in `tests/older_engine.py` writes the
older engine's log).

Soft recovery reads the older engine's generations only until this engine's first open has
checkpointed every database, so that open is where a crash leaves a log of both engines to
replay: it replays the older engine's generations, logs an ATTACH record for each database
joining the stream and checkpoints. It is crashed at every sync point, and then during the
first transactions after it; every state must recover to the older engine's committed rows
plus a prefix of the new transactions that holds every acknowledged one, in every database:
one the older engine created, one it attached (no ATTACH record), one it detached and left in
the directory (it joins at the first new open: an ATTACH record), and one it created after
that detach under the detached one's id (the joining one takes another).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.cli.main import run
from jetstore.errors import AttachedDatabaseMismatch
from jetstore.format.dbheader import PEEK_SIZE, DatabaseHeader, choose_db_header, peek_page_size
from jetstore.format.logrecords import AttachDatabaseRecord
from jetstore.io import FileSystem
from jetstore.io.recording import CrashSimulator, DataVariant, DirVariant, Recorder, Variant
from older_engine import Rows, binding_records, older_engine, read_rows, write_rows

OPTIONS: dict[str, Any] = {
    "log_file_size": 64 * 1024,
    "checkpoint_depth": 1 << 30,
    "checkpoint_interval": 1e6,
}


class Model:
    """The committed rows of every database, as the workload changed them."""

    def __init__(self) -> None:
        self.rows: Rows = {}

    def write(
        self, inst: jetstore.Instance, name: str, keys: range, tag: str, delete: int | None = None
    ) -> None:
        """One transaction per key upserting `tag`+key (then, with `delete`, one deleting it)."""
        write_rows(inst, self.rows, name, keys, tag, delete=delete)

    def snapshot(self) -> Rows:
        return {name: dict(rows) for name, rows in self.rows.items()}


def header_of(path: Path) -> DatabaseHeader:
    raw = path.read_bytes()
    size = peek_page_size(raw[:PEEK_SIZE])
    assert size is not None
    header, _problems = choose_db_header(raw[:size], raw[size : 2 * size], path=str(path))
    return header


def state_digest(directory: Path) -> str:
    """What recovery reads of a crash state (the event log left out: recovery only appends
    to it): states alike in it are checked once."""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if not path.name.startswith("events"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def older_engine_part(live: Path, elsewhere: Path, model: Model) -> None:
    """What the older engine did before the upgrade: two opens over several log generations,
    the second crashed with changes after its last checkpoint; 'spare', detached in it, is
    left in the directory."""
    with older_engine():
        inst = jetstore.open(live, **OPTIONS)
        model.write(inst, "main", range(0, 40), "a")  # created by the older engine
        other = jetstore.open(elsewhere, **OPTIONS)
        model.write(other, "guest", range(0, 5), "g")
        guest = other.detach("guest")
        other.close()
        inst.attach(guest)  # attached by the older engine: no ATTACH record
        model.write(inst, "guest", range(5, 30), "g", delete=3)
        model.write(inst, "spare", range(0, 10), "s")
        inst.close()

        inst = jetstore.open(live, **OPTIONS)
        model.write(inst, "main", range(20, 70), "b", delete=5)
        model.write(inst, "spare", range(10, 12), "s")
        spare_id = inst.database("spare").db_id
        inst.detach("spare")  # no DETACH record; it stays in the directory
        model.write(inst, "late", range(0, 10), "l")
        assert inst.database("late").db_id == spare_id  # the id is given again
        model.write(inst, "guest", range(20, 50), "h", delete=7)
        model.write(inst, "late", range(5, 15), "m")
        model.write(inst, "main", range(60, 80), "c")
        inst.simulate_crash()
    assert binding_records(live) == []  # the older engine wrote neither record


def test_first_open_after_an_in_place_upgrade_crashed_at_every_sync_point(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    model = Model()
    older_engine_part(live, tmp_path / "elsewhere", model)
    pristine = tmp_path / "pristine"
    shutil.copytree(live, pristine)

    # This engine's first open: replay of the older engine's generations, an ATTACH record
    # for 'spare' (under a new id: 'late' has its old one), checkpoints. Then a transaction
    # in each database, each acknowledged before the next starts.
    states: list[Rows] = [model.snapshot()]
    starts: list[int] = []
    acks: list[int] = []
    recorder = Recorder()
    inst = jetstore.open(live, filesystem=FileSystem(hook=recorder), **OPTIONS)
    assert read_rows(inst) == model.rows
    steps: list[Callable[[], None]] = [
        lambda: model.write(inst, "main", range(60, 61), "n"),
        lambda: model.write(inst, "guest", range(40, 41), "n"),
        lambda: model.write(inst, "spare", range(5, 6), "n"),
        lambda: model.write(inst, "late", range(0, 1), "n"),
    ]
    for step in steps:
        starts.append(recorder.mark())
        step()
        acks.append(recorder.mark())
        states.append(model.snapshot())
    inst.simulate_crash()
    joined = [r for _gen, r in binding_records(live) if isinstance(r, AttachDatabaseRecord)]
    assert [r.name for r in joined] == ["spare"]

    sim = CrashSimulator(recorder.ops, str(live), str(pristine))
    checked = 0
    seen: set[str] = set()
    joining = {"logged, not bound": 0, "bound": 0}  # how far 'spare' had joined
    for point in sim.crash_points():
        lo = sum(1 for a in acks if a <= point)
        hi = sum(1 for s in starts if s < point)
        for variant in (
            Variant(DataVariant.ALL, DirVariant.APPLY),
            Variant(DataVariant.NONE, DirVariant.REVERT),
        ):
            target = tmp_path / f"state-{point}-{variant.data.value}"
            sim.materialise(point, str(target), variant)
            digest = state_digest(target)
            if digest in seen:
                shutil.rmtree(target)
                continue
            seen.add(digest)
            if header_of(target / "spare.edb").db_id == joined[0].database_id:
                joining["bound"] += 1
            elif binding_records(target):
                joining["logged, not bound"] += 1
            again = jetstore.open(target, **OPTIONS)
            try:
                found = read_rows(again)
            finally:
                again.simulate_crash()  # the state is thrown away: a close would write it
            matches = [j for j, state in enumerate(states) if state == found]
            assert any(lo <= j <= hi for j in matches), (point, str(variant), lo, hi, matches)
            shutil.rmtree(target)
            checked += 1
    assert not sim.anomalies, sim.anomalies[:5]
    assert checked >= 40
    # Crashes between the ATTACH record and the checkpoint that binds the header, and after.
    assert min(joining.values()) >= 5, joining


def test_logs_of_both_engines_read_by_the_admin_tools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`logs verify` and `dump logs --records` read a crashed upgraded instance's log (both
    engines' generations) without a problem; then it recovers every database."""
    live = tmp_path / "live"
    model = Model()
    older_engine_part(live, tmp_path / "elsewhere", model)
    inst = jetstore.open(live, **OPTIONS)
    model.write(inst, "spare", range(20, 25), "n")
    model.write(inst, "late", range(20, 25), "n", delete=0)
    inst.simulate_crash()

    capsys.readouterr()
    assert run(["logs", "verify", str(live), "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)["result"]
    assert verified["ok"] and verified["counts"] == {"error": 0, "warning": 0, "info": 0}
    assert run(["dump", "logs", str(live), "--records", "--json"]) == 0
    *records, envelope = map(json.loads, capsys.readouterr().out.splitlines())
    assert envelope["result"]["records_error"] is None
    assert envelope["result"]["records"] == len(records)
    assert [(r["type"], r["name"]) for r in records if "name" in r] == [
        ("create_database", "main"),
        ("create_database", "spare"),
        ("create_database", "late"),
        ("attach_database", "spare"),
    ]

    again = jetstore.open(live, **OPTIONS)
    try:
        assert read_rows(again) == model.rows
    finally:
        again.close()


def test_an_older_copy_from_before_an_unlogged_detach_is_not_brought_forward(
    tmp_path: Path,
) -> None:
    """A copy of 'other' made before the older engine detached it (no DETACH record), put
    back after this engine's open let the database join again (an ATTACH record): replay
    cannot bring the copy across the time the database was away (its file may have changed
    there), so recovery refuses as after a logged detach and attach, naming the database.
    It used to apply the records after the join to the copy. With the file the instance
    had, everything is recovered."""
    live = tmp_path / "live"
    model = Model()
    with older_engine():
        inst = jetstore.open(live, **OPTIONS)
        model.write(inst, "main", range(0, 5), "m")
        model.write(inst, "other", range(0, 5), "o")
        inst.close()
        shutil.copy(live / "other.edb", tmp_path / "older-copy.edb")
        inst = jetstore.open(live, **OPTIONS)
        model.write(inst, "other", range(5, 10), "o")
        inst.detach("other")
        inst.close()
    inst = jetstore.open(live, **OPTIONS)  # 'other' joins: an ATTACH record
    model.write(inst, "other", range(10, 12), "n", delete=0)
    inst.simulate_crash()
    shutil.copy(live / "other.edb", tmp_path / "other.edb")
    shutil.copy(tmp_path / "older-copy.edb", live / "other.edb")
    with pytest.raises(AttachedDatabaseMismatch) as info:
        jetstore.open(live, **OPTIONS)
    assert "'other'" in str(info.value)

    shutil.copy(tmp_path / "other.edb", live / "other.edb")
    again = jetstore.open(live, **OPTIONS)
    try:
        assert read_rows(again) == model.rows
    finally:
        again.close()
