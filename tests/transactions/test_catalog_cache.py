"""The database's cache of table definitions (`Database.catalog_cache`, used by
`Transaction.table` before a transaction's first write): every transaction still sees exactly
the tables of its own snapshot, across creations, drops, re-creations, raw catalog writes and
concurrent transactions."""

from __future__ import annotations

import gc
import random
import weakref
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jetstore.instance.database as database_module
from instance_store import Store
from jetstore.errors import ObjectNotFound
from jetstore.tables.catalog import table_entry_key
from jetstore.tables.records import RecordCodec
from jetstore.tables.schema import Column, TableDef, encode_table_def
from jetstore.tables.table import TableShape


def columns(version: int) -> list[tuple[str, str]]:
    return [("id", "int")] + [(f"c{version}_{i}", "text") for i in range(version % 3 + 1)]


def test_the_cache_is_filled_by_a_first_table_and_used_by_the_next(store: Store) -> None:
    store.db.create_table("t", columns(1), "id")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "c1_0": "a", "c1_1": "b"})
    cache = store.db.catalog_cache(store.db.position)
    assert cache is not None and set(cache) == {"t"}
    entry_key, definition, _codec, _shape = cache["t"]
    assert entry_key == table_entry_key("t")
    with store.db.transaction() as txn:
        table = txn.table("t")
        assert table.definition is definition  # from the cache
        assert set(txn.schema_keys) == {entry_key}  # a concurrent drop still conflicts
        assert list(table.scan()) == [{"id": 1, "c1_0": "a", "c1_1": "b"}]


def test_a_catalog_change_empties_the_cache_for_later_snapshots(store: Store) -> None:
    store.db.create_table("t", columns(1), "id")
    with store.db.transaction() as txn:
        txn.table("t")
    before = store.db.transaction()
    store.db.drop_table("t")
    # The snapshot before the drop is older than the last catalog change: no cache for it,
    # and it still sees the table it started with.
    assert store.db.catalog_cache(before.snapshot_position) is None
    assert before.table("t").definition.name == "t"
    before.rollback()
    assert store.db.catalog_cache(store.db.position) == {}
    with store.db.transaction() as txn, pytest.raises(ObjectNotFound):
        txn.table("t")
    store.db.create_table("t", columns(2), "id")
    with store.db.transaction() as txn:
        assert [c.name for c in txn.table("t").definition.columns] == ["id", "c2_0", "c2_1", "c2_2"]


def test_a_transaction_that_wrote_reads_its_own_catalog(store: Store) -> None:
    store.db.create_table("t", columns(1), "id")
    with store.db.transaction() as txn:
        txn.table("t")  # fills the cache
    with store.db.transaction() as txn:
        txn.drop_table("t")
        with pytest.raises(ObjectNotFound):
            txn.table("t")
        txn.create_table("t", columns(2), "id")
        assert txn.table("t").definition.columns[1].name == "c2_0"
        other = store.db.transaction()
        assert other.table("t").definition.columns[1].name == "c1_0"
        other.rollback()
    with store.db.transaction() as txn:
        assert txn.table("t").definition.columns[1].name == "c2_0"


def test_a_raw_write_of_a_catalog_key_counts_as_a_catalog_change(store: Store) -> None:
    store.db.create_table("t", columns(1), "id")
    with store.db.transaction() as txn:
        txn.table("t")
        definition = txn.get(table_entry_key("t"))
    assert definition is not None
    with store.db.transaction() as txn:
        txn.put(table_entry_key("u"), definition)  # a second name for the same definition
    with store.db.transaction() as txn:
        assert txn.table("u").definition.name == "t"
    with store.db.transaction() as txn:
        txn.delete(table_entry_key("u"))
    with store.db.transaction() as txn, pytest.raises(ObjectNotFound):
        txn.table("u")


def test_names_that_are_not_strings_are_still_not_found(store: Store) -> None:
    store.db.create_table("t", columns(1), "id")
    with store.db.transaction() as txn:
        txn.table("t")
        for name in (b"t", 1, None):
            with pytest.raises(ObjectNotFound):
                txn.table(name)  # type: ignore[arg-type]


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1))
def test_every_snapshot_sees_its_own_tables(
    tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    # Random creations, drops and re-creations committed while other transactions hold older
    # snapshots; each transaction's view of every name is compared with a model of the
    # catalog as of its snapshot.
    rng = random.Random(seed)
    store = Store(tmp_path_factory.mktemp("catalog"))
    try:
        model: dict[str, int] = {}  # table name -> version of its definition (committed)
        open_txns: list[tuple[object, dict[str, int]]] = []
        names = ["a", "b", "c"]
        for step in range(30):
            action = rng.random()
            name = rng.choice(names)
            if action < 0.3:
                if name in model:
                    store.db.drop_table(name)
                    del model[name]
                else:
                    store.db.create_table(name, columns(step), "id")
                    model[name] = step
            elif action < 0.5:
                open_txns.append((store.db.transaction(), dict(model)))
            elif action < 0.6 and open_txns:
                txn, _seen = open_txns.pop(rng.randrange(len(open_txns)))
                txn.rollback()  # type: ignore[attr-defined]
            else:
                txn = store.db.transaction()
                open_txns.append((txn, dict(model)))
            for txn, seen in open_txns:
                check = rng.choice(names)
                if check in seen:
                    columns_seen = [c.name for c in txn.table(check).definition.columns]  # type: ignore[attr-defined]
                    assert columns_seen == [n for n, _t in columns(seen[check])]
                else:
                    with pytest.raises(ObjectNotFound):
                        txn.table(check)  # type: ignore[attr-defined]
        for txn, _seen in open_txns:
            txn.rollback()  # type: ignore[attr-defined]
    finally:
        store.close()


def test_two_definitions_of_one_table_in_use_at_once_keep_their_codecs(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the codec and shape cache (`Database.shape_for`, `codec_for`) held one
    definition per table, so transactions begun before an add_column, alternating with
    transactions begun after it, rebuilt both for every table they opened. Each definition
    now keeps its own, and each transaction decodes by its own definition."""
    store.db.create_table("t", [("id", "int"), ("v", "text")], "id")
    store.db.create_table("w", [("id", "int")], "id")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "a"})
        txn.table("w")  # its codec is built here, not in the loop below
    before = [store.db.transaction() for _ in range(6)]  # snapshots of the old definition
    store.db.add_column("t", "x", "int", default=7)
    built: list[str] = []

    def counted(cls: type[Any]) -> Any:
        def make(*args: Any) -> Any:
            built.append(cls.__name__)
            return cls(*args)

        return make

    monkeypatch.setattr(database_module, "RecordCodec", counted(RecordCodec))
    monkeypatch.setattr(database_module, "TableShape", counted(TableShape))
    codecs: dict[str, list[RecordCodec]] = {"old": [], "new": []}
    for i, old in enumerate(before):
        # A transaction that wrote first does not use the catalog cache: it reads the
        # definition and asks `shape_for` for its codec, as a snapshot older than the last
        # catalog change does.
        with store.db.transaction() as new:
            new.table("w").insert({"id": i})
            t = new.table("t")
            assert t.get(1) == {"id": 1, "v": "a", "x": 7}
            codecs["new"].append(store.db.shape_for(t.definition)[0])
        t = old.table("t")
        assert t.get(1) == {"id": 1, "v": "a"}
        assert list(t.scan()) == [{"id": 1, "v": "a"}]
        codecs["old"].append(store.db.shape_for(t.definition)[0])
        old.rollback()
        if i == 0:
            # The first new transaction built the shape of the definition read from the
            # catalog (its codec is the adding transaction's: an equal definition).
            assert built == ["TableShape"]
    assert built == ["TableShape"]  # then every lookup hit
    for kind in ("old", "new"):
        assert all(codec is codecs[kind][0] for codec in codecs[kind])
    assert codecs["old"][0] is not codecs["new"][0]


def test_the_codec_cache_keeps_a_few_definitions_of_a_table(store: Store) -> None:
    store.db.create_table("t", [("id", "int")], "id")
    with store.db.transaction() as txn:
        first = txn.table("t").definition
    definitions = [first]
    for i in range(4):
        definitions.append(definitions[-1].with_column(Column(f"c{i}", "int", default=i)))
    codecs = [store.db.shape_for(d)[0] for d in definitions]
    assert len({id(codec) for codec in codecs}) == 5
    # The last four stay (in any order of use); the oldest built was evicted.
    for d, codec in reversed(list(zip(definitions[1:], codecs[1:], strict=True))):
        assert store.db.shape_for(d)[0] is codec
        assert store.db.codec_for(d) is codec
    assert store.db.shape_for(first)[0] is not codecs[0]


def test_decoded_definitions_are_kept_within_a_byte_bound(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Definitions decoded from the catalog are cached by their encoding, at most
    `_DEFINITIONS_MAX_BYTES` of it: a table of many columns changed over and over left every
    version of its definition in the cache (up to 1,024 of them, ~4x their encoding each in
    Python objects: 800 MB for a table of 2,000 columns)."""
    bound = 128 * 1024
    monkeypatch.setattr(database_module, "_DEFINITIONS_MAX_BYTES", bound, raising=False)
    many = [("id", "int")] + [
        (f"a_long_column_name_{i:04d}_{'x' * 40}", "text") for i in range(300)
    ]
    store.db.create_table("t", many, "id")
    versions: list[weakref.ref[TableDef]] = []
    for i in range(16):
        store.db.add_column("t", f"added_{i}", "int")
        with store.db.transaction() as txn:
            definition = txn.table("t").definition  # read from the catalog: decoded
            assert definition.columns[-1].name == f"added_{i}"
            versions.append(weakref.ref(definition))
            size = len(encode_table_def(definition))
        del definition
    gc.collect()
    alive = sum(ref() is not None for ref in versions)
    # The cache's share, and the last few built (`shape_for` keeps their codecs).
    assert alive <= bound // size + database_module._DEFINITIONS_PER_TABLE
    with store.db.transaction() as txn:
        assert txn.table("t").definition.columns[-1].name == "added_15"
