"""`jetstore.pages.collector`: the collector's pause for bulk tree building."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from jetstore.pages.collector import building_in_bulk


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def _in_generation(obj: object, generation: int) -> bool:
    return any(o is obj for o in gc.get_objects(generation=generation))


def test_the_collector_is_paused_inside_and_runs_again_after() -> None:
    gc.enable()
    with building_in_bulk():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_collector_runs_again_after_an_exception() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), building_in_bulk():
        raise RuntimeError("the build failed")
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled() -> None:
    gc.disable()
    with building_in_bulk():
        pass
    assert not gc.isenabled()
    with building_in_bulk(), building_in_bulk():
        pass
    assert not gc.isenabled()


def test_a_pause_inside_a_pause_resumes_only_at_the_outer_end() -> None:
    gc.enable()
    with building_in_bulk():
        with building_in_bulk():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_what_the_build_left_alive_goes_to_the_oldest_generation() -> None:
    gc.enable()
    gc.collect()
    with building_in_bulk():
        leaves = [[bytes([i % 256]) * 20 for _ in range(8)] for i in range(1000)]
        assert _in_generation(leaves[0], 0)
    assert _in_generation(leaves[0], 2)
    assert _in_generation(leaves[-1], 2)
    assert not _in_generation(leaves[0], 0)
    # Promoted, not frozen: garbage among them is still collected by a full collection.
    assert gc.get_freeze_count() == 0
    cycle: list[object] = []
    with building_in_bulk():
        cycle.append(cycle)
    probe = [cycle]
    del cycle
    gc.collect()
    assert probe[0][0] is probe[0]  # alive through `probe`
    probe.clear()
    assert gc.collect() >= 1  # the self-referencing list, now garbage


def test_objects_the_application_froze_stay_frozen() -> None:
    gc.enable()
    frozen = [[1], [2]]
    gc.freeze()
    count = gc.get_freeze_count()
    assert count > 0
    with building_in_bulk():
        built = [[b"x"] for _ in range(10)]
    assert gc.get_freeze_count() == count
    assert not _in_generation(frozen, 2)
    assert not _in_generation(built, 2)  # not promoted: that would have thawed `frozen`
    assert gc.isenabled()
