"""File names: generation logs, reserve logs, database files, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstore.format.filenames import (
    BASE_NAME,
    CHECKPOINT_FILE,
    CURRENT_LOG,
    DATABASE_SUFFIX,
    LOCK_FILE,
    MAX_GENERATION,
    RESERVE_LOG_COUNT,
    TEMP_LOG,
    database_file_name,
    generation_log_name,
    is_valid_database_name,
    misnamed_log_name,
    parse_database_file_name,
    parse_generation_log_name,
    parse_reserve_log_name,
    reserve_log_name,
)


def test_fixed_names() -> None:
    assert BASE_NAME == "edb"
    assert CURRENT_LOG == "edb.log"
    assert TEMP_LOG == "edbtmp.log"
    assert CHECKPOINT_FILE == "edb.chk"
    assert LOCK_FILE == "jetstore.lock"
    assert DATABASE_SUFFIX == ".edb"
    assert MAX_GENERATION == 0xFFFFFFFF
    assert RESERVE_LOG_COUNT >= 1


@pytest.mark.parametrize(
    ("generation", "name"),
    [
        (1, "edb00000001.log"),
        (0x2A, "edb0000002A.log"),
        (0xABCDEF, "edb00ABCDEF.log"),
        (0xFFFFFFFF, "edbFFFFFFFF.log"),
    ],
)
def test_generation_names(generation: int, name: str) -> None:
    assert generation_log_name(generation) == name
    assert parse_generation_log_name(name) == generation


@given(st.integers(1, MAX_GENERATION))
def test_generation_name_round_trip(generation: int) -> None:
    name = generation_log_name(generation)
    assert len(name) == len("edb") + 8 + len(".log")
    hex_part = name[3:11]
    assert hex_part == hex_part.upper()
    assert all(c in "0123456789ABCDEF" for c in hex_part)
    assert parse_generation_log_name(name) == generation


@pytest.mark.parametrize("generation", [0, -1, MAX_GENERATION + 1, 2**40])
def test_generation_out_of_range(generation: int) -> None:
    with pytest.raises(ValueError):
        generation_log_name(generation)


@pytest.mark.parametrize(
    "name",
    [
        "edb0000002a.log",  # lowercase hex
        "edb0000002A.LOG",
        "EDB0000002A.log",
        "edb000002A.log",  # 7 digits
        "edb00000002A.log",  # 9 digits
        "edb2A.log",
        "edb0000002G.log",
        "edb0000002A.log.bak",
        "xedb0000002A.log",
        "edb0000002A",
        "edb.log",
        "edbtmp.log",
        "edb.chk",
        "edbres00001.jrs",
        "edb+000002A.log",
        "edb 000002A.log",
        "",
    ],
)
def test_not_generation_names(name: str) -> None:
    assert parse_generation_log_name(name) is None


def test_trailing_newline_is_not_a_valid_name() -> None:
    assert parse_generation_log_name("edb0000002A.log\n") is None
    assert parse_reserve_log_name("edbres00001.jrs\n") is None
    assert parse_database_file_name("orders.edb\n") is None
    assert not is_valid_database_name("orders\n")


def test_generation_zero_is_not_a_generation_name() -> None:
    assert parse_generation_log_name("edb00000000.log") is None


def test_reserve_name_digits_are_ascii() -> None:
    assert parse_reserve_log_name("edbres\u0660\u0660\u0660\u0660\u0661.jrs") is None


@pytest.mark.parametrize("index", [0, 1, 2, 42, 99999])
def test_reserve_names(index: int) -> None:
    name = reserve_log_name(index)
    assert name == f"edbres{index:05d}.jrs"
    assert parse_reserve_log_name(name) == index


def test_reserve_names_are_distinct_and_not_generations() -> None:
    names = [reserve_log_name(i) for i in range(RESERVE_LOG_COUNT)]
    assert len(set(names)) == RESERVE_LOG_COUNT
    for name in names:
        assert parse_generation_log_name(name) is None
        assert parse_database_file_name(name) is None
        assert name not in (CURRENT_LOG, TEMP_LOG)


@pytest.mark.parametrize(
    "name", ["edbres0001.jrs", "edbres000001.jrs", "edbresABCDE.jrs", "edbres00001.log", ""]
)
def test_not_reserve_names(name: str) -> None:
    assert parse_reserve_log_name(name) is None


@pytest.mark.parametrize(
    "name", ["a", "A", "_", "orders", "Orders_2024", "x-y", "_private", "a" * 64, "db9"]
)
def test_valid_database_names(name: str) -> None:
    assert is_valid_database_name(name)
    file_name = database_file_name(name)
    assert file_name == name + ".edb"
    assert parse_database_file_name(file_name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "9lives",
        "-dash",
        "a" * 65,
        "has space",
        "dot.name",
        "slash/name",
        "back\\slash",
        "naïve",
        "数据",
        "..",
        "a:b",
        "tab\tname",
    ],
)
def test_invalid_database_names(name: str) -> None:
    assert not is_valid_database_name(name)
    assert parse_database_file_name(name + ".edb") is None


@pytest.mark.parametrize(
    "file_name", ["orders.EDB", "orders.edb.tmp", "orders", ".edb", "edb.log", "edb.chk"]
)
def test_not_database_file_names(file_name: str) -> None:
    assert parse_database_file_name(file_name) is None


@given(st.text(max_size=80))
def test_database_name_validation_agrees_with_parsing(name: str) -> None:
    valid = is_valid_database_name(name)
    parsed = parse_database_file_name(database_file_name(name))
    if valid:
        assert parsed == name
        assert 1 <= len(name) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
        assert not name[0].isdigit() and name[0] != "-"
    elif "\n" not in name:
        assert parsed is None


@pytest.mark.parametrize(
    ("name", "right"),
    [
        ("edb0000000a.log", "edb0000000A.log"),
        ("EDB00000003.LOG", "edb00000003.log"),
        ("edb3.log", "edb00000003.log"),
        ("edb000000003.log", "edb00000003.log"),
        ("EDB.LOG", "edb.log"),
        ("edb0000000A.log", None),
        ("edb.log", None),
        ("edbtmp.log", None),
        ("edb00000000.log", None),
        ("edb100000000.log", None),
        ("main.edb", None),
    ],
)
def test_misnamed_log_names_are_told_their_right_name(name: str, right: str | None) -> None:
    assert misnamed_log_name(name) == right
