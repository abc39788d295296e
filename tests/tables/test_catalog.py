"""`jetstore.tables.catalog`: naming tree entries in error messages (`describe_key`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jetstore.tables.catalog import (
    NEXT_OBJECT_ID_KEY,
    long_value_key,
    object_prefix,
    table_def_chunk_key,
    table_entry_key,
)
from jetstore.tables.catalog import describe_key as describe
from jetstore.tables.keys import encode_key
from jetstore.tables.schema import make_table_def

TABLE = make_table_def(
    "t",
    [("id", "int"), ("name", "text")],
    "id",
    [("by_name", "name", True)],
    table_id=5,
    lv_id=6,
    index_ids=[7],
)


def test_every_kind_of_entry_is_named_with_its_table_index_and_key_values() -> None:
    pk = encode_key((42,))
    assert describe(table_entry_key("t"), [TABLE]) == "the definition of table 't'"
    assert describe(table_def_chunk_key("t", 3), [TABLE]) == "the definition of table 't'"
    assert "next object id" in describe(NEXT_OBJECT_ID_KEY, [TABLE])
    record = describe(object_prefix(5) + pk, [TABLE])
    assert record == "the record with primary key (42,) of table 't'"
    entry = describe(object_prefix(7) + encode_key(("ada",)) + pk, [TABLE])
    assert entry == "the entry for key ('ada',) (primary key (42,)) of index 'by_name' of table 't'"
    long_value = describe(long_value_key(6, pk, 1, 0), [TABLE])
    assert long_value == "a long value of the record with primary key (42,) of table 't'"
    # An entry of a table not given is named by its bytes.
    assert describe(object_prefix(9) + pk, [TABLE]).endswith((object_prefix(9) + pk).hex())


@given(st.binary(max_size=80))
def test_any_key_is_described_without_raising(key: bytes) -> None:
    assert describe(key, [TABLE])
    assert describe(object_prefix(5) + key, [TABLE])
    assert describe(object_prefix(7) + key, [TABLE])
    assert describe(object_prefix(6) + key, [TABLE])
