"""The seed failure as a regression test (Exchange KB Q176239, error -1811 / 4294965485 /
0xfffff8ed): circular logging on, the checkpoint file held by another program while commits
run across many log generations, then a crash. In jetstore the instance must start again
with every acknowledged commit, because no log the durable checkpoint names is ever deleted.

Two ways of making `edb.chk` unwritable from outside the engine's control:
- io-layer injection in the child process (every operation on edb.chk fails with EACCES while
  a flag file exists): always runs;
- `chattr +i` on the real file (immutable: even root cannot write it): runs where the test
  runs as root on a file system with immutable attributes, and is skipped otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import jetstore
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.filenames import parse_generation_log_name

from .child_runner import run_and_kill

ROUNDS = 20
SOAK_ROUNDS = 500
CHILD = str(Path(__file__).with_name("seed_child.py"))


def run_child(
    directory: Path,
    start: int,
    flag: Path | None,
    lock: Callable[[], None],
    rng: random.Random,
) -> list[int]:
    def hold_the_file_then_wait() -> None:
        time.sleep(0.1)  # a checkpoint or two while the file is writable
        lock()
        time.sleep(rng.uniform(0.3, 1.2))  # commits across many generations, file held

    return run_and_kill(
        [CHILD, str(directory), str(start), str(flag or "")], hold_the_file_then_wait
    )


def logs_named_by_checkpoint_file_present(directory: Path) -> None:
    """The invariant itself: every generation from the one the durable checkpoint file names
    to the newest is still there (the seed deleted exactly these)."""
    state, _ = read_checkpoint_file((directory / "edb.chk").read_bytes(), path="edb.chk")
    names = os.listdir(directory)
    gens = {g for g in map(parse_generation_log_name, names) if g is not None}
    newest = max(gens)
    needed = set(range(state.checkpoint_position.generation, newest + 1))
    missing = sorted(needed - gens)
    assert not missing, f"logs named by the durable checkpoint file were deleted: {missing}"


def reopen_and_check(directory: Path, acknowledged: set[int]) -> int:
    """The seed's failing step: start after the crash. Must succeed with every ack present."""
    logs_named_by_checkpoint_file_present(directory)
    with (
        jetstore.open(directory, circular_logging=True, log_file_size=64 * 1024) as instance,
        instance.database("main").transaction() as txn,
    ):
        present = {row["id"] for row in txn.table("orders").scan()}
    missing = acknowledged - present
    assert not missing, f"acknowledged commits lost: {sorted(missing)[:10]}"
    return max(present, default=-1) + 1


def rounds_with_injected_lock(directory: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    flag = directory.parent / f"{directory.name}.chk-locked"
    acknowledged: set[int] = set()
    next_id = 0
    generations_spanned = 0
    for _ in range(rounds):
        flag.unlink(missing_ok=True)
        before = {n for n in os.listdir(directory)} if directory.exists() else set()
        acks = run_child(directory, next_id, flag, lambda: flag.touch(), rng)
        after = set(os.listdir(directory))
        generations_spanned += len({n for n in after - before if n.startswith("edb0")})
        flag.unlink()  # the other program lets go of edb.chk
        acknowledged.update(acks)
        next_id = reopen_and_check(directory, acknowledged)
    assert generations_spanned > rounds, "the rounds must span many log generations"


def test_seed_scenario_with_injected_lock(tmp_path: Path) -> None:
    rounds_with_injected_lock(tmp_path / "instance", ROUNDS, seed=176239)


@pytest.mark.soak
def test_seed_scenario_with_injected_lock_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("JETSTORE_SEED", "176239"))
    rounds_with_injected_lock(tmp_path / "instance", SOAK_ROUNDS, seed)


def _chattr_works(directory: Path) -> str | None:
    """None if `chattr +i` can make a file immutable here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "chattr +i needs root"
    if shutil.which("chattr") is None:
        return "the chattr command is not installed"
    probe = directory / "probe"
    probe.write_bytes(b"x")
    result = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True)
    if result.returncode != 0:
        return f"this file system has no immutable attribute ({result.stderr.strip()})"
    try:
        try:
            with open(probe, "r+b") as f:
                f.write(b"y")
        except PermissionError:
            return None
        return "chattr +i did not make the file read-only"
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()


def test_seed_scenario_with_immutable_checkpoint_file(tmp_path: Path) -> None:
    reason = _chattr_works(tmp_path)
    if reason is not None:
        pytest.skip(f"external lock by chattr +i not possible here: {reason}")
    directory = tmp_path / "instance"
    chk = directory / "edb.chk"
    rng = random.Random(1176239)
    acknowledged: set[int] = set()
    next_id = 0
    for _ in range(5):

        def lock() -> None:
            subprocess.run(["chattr", "+i", str(chk)], check=True)

        try:
            acks = run_child(directory, next_id, None, lock, rng)
        finally:
            subprocess.run(["chattr", "-i", str(chk)], capture_output=True)
        acknowledged.update(acks)
        next_id = reopen_and_check(directory, acknowledged)
