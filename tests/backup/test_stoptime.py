"""`jetstore.backup.stoptime`: the commits a restore plan reads agree with recovery's scan."""

from __future__ import annotations

from pathlib import Path

import jetstore
from jetstore.backup.stoptime import LogSource, commits, first_commit_after, images_commit_bound
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.logrecords import (
    RECORD_COMMIT,
    RECORD_CREATE_DATABASE,
    commit_time_us,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition
from jetstore.io import FileSystem
from jetstore.log.reader import scan_to_end, take_inventory


def test_commits_are_the_scanners_commit_records_also_across_generations(
    tmp_path: Path,
) -> None:
    inst = jetstore.open(tmp_path, log_file_size=64 * 1024)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    for i in range(40):
        with db.transaction() as txn:
            # Every fifth transaction is larger than a log file: its record spans generations.
            txn.table("kv").insert({"k": i, "v": "x" * (90_000 if i % 5 == 0 else 500)})
    inst.simulate_crash()
    fs = FileSystem()
    inventory = take_inventory(fs, str(tmp_path), owner="test")
    records, _result = scan_to_end(fs, inventory, LogPosition(1, 0), owner="test")
    # A database's creation counts as a commit at its signature time: replay of a restore
    # stops at one later than its stop time, as at a commit.
    expected = [
        (r.start, r.end, commit_time_us(r.payload, r.start))
        if record_type(r.payload) == RECORD_COMMIT
        else (r.start, r.end, decode_record(r.payload).signature_time_us)  # type: ignore[union-attr]
        for r in records
        if record_type(r.payload) in (RECORD_COMMIT, RECORD_CREATE_DATABASE)
    ]
    assert len(expected) >= 40
    assert any(start.generation != end.generation for start, end, _ in expected)
    sources = [
        LogSource(
            generation,
            lambda path=entry.path: fs.read_file(path, owner="test"),
            generation_log_name(generation) if not entry.is_current else CURRENT_LOG,
        )
        for generation, entry in sorted(inventory.files.items())
    ]
    seen = [(c.start, c.end, c.time_us) for c in commits(sources)]
    assert seen == expected
    times = [t for _, _, t in expected]
    assert times == sorted(times)  # stamped under the commit lock, in log order
    after, before = first_commit_after(sources, times[10])
    assert after is not None and before is not None
    assert (before.time_us, after.time_us) == (times[10], times[11])
    assert first_commit_after(sources, times[-1]) == (None, list(commits(sources))[-1])
    middle = expected[20][0]
    bound = images_commit_bound(sources, middle)
    assert bound.commit is not None and bound.time_us == times[19]
