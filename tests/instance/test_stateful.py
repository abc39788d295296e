"""Model-based test: the engine against a dict, with close/reopen and crash/reopen steps.

A crash drops everything not yet durable: durable commits must all survive, and of the lazy
commits since the last durable point, some prefix survives (never a hole, never a part).
"""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import jetstore

KEYS = st.integers(min_value=0, max_value=40)
VALUES = st.one_of(
    st.text(max_size=20),
    st.binary(min_size=0, max_size=3000).map(lambda b: b.hex()),  # long values too
)


class EngineVersusDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="jetstore-model-")
        self.instance = self._open()
        db = self.instance.database("main", create=True)
        db.create_table(
            "kv", [("k", "int"), ("v", "text")], primary_key="k", indexes=[("by_v", ["v"])]
        )
        self.durable: dict[int, str] = {}
        self.lazy: list[dict[int, str]] = []  # states after each lazy commit since durable
        self.txn: jetstore.Transaction | None = None
        self.txn_model: dict[int, str] = {}

    def _open(self) -> jetstore.Instance:
        return jetstore.open(
            self.directory,
            log_file_size=64 * 1024,
            checkpoint_depth=64 * 1024,
            page_size=4096,
            cache_size=64 * 4096,
        )

    @property
    def model(self) -> dict[int, str]:
        return self.lazy[-1] if self.lazy else self.durable

    def teardown(self) -> None:
        if self.txn is not None:
            self.txn.rollback()
        self.instance.close()
        assert self.instance.registry.total() == 0
        shutil.rmtree(self.directory, ignore_errors=True)

    @precondition(lambda self: self.txn is None)
    @rule()
    def begin(self) -> None:
        self.txn = self.instance.database("main").transaction()
        self.txn_model = dict(self.model)

    @precondition(lambda self: self.txn is not None)
    @rule(key=KEYS, value=VALUES)
    def put(self, key: int, value: str) -> None:
        assert self.txn is not None
        self.txn.table("kv").upsert({"k": key, "v": value})
        self.txn_model[key] = value

    @precondition(lambda self: self.txn is not None)
    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        assert self.txn is not None
        table = self.txn.table("kv")
        if key in self.txn_model:
            table.delete(key)
            del self.txn_model[key]
        else:
            assert table.get(key) is None

    @precondition(lambda self: self.txn is not None)
    @rule(lazy=st.booleans())
    def commit(self, lazy: bool) -> None:
        assert self.txn is not None
        self.txn.commit(lazy=lazy)
        self.txn = None
        if lazy:
            self.lazy.append(dict(self.txn_model))
        else:
            self.durable = dict(self.txn_model)
            self.lazy = []

    @precondition(lambda self: self.txn is not None)
    @rule()
    def rollback(self) -> None:
        assert self.txn is not None
        self.txn.rollback()
        self.txn = None

    @rule()
    def checkpoint(self) -> None:
        self.instance.checkpoint()

    @precondition(lambda self: self.txn is None)
    @rule()
    def close_and_reopen(self) -> None:
        self.instance.close()
        self.durable = dict(self.model)
        self.lazy = []
        self.instance = self._open()

    @precondition(lambda self: self.txn is None)
    @rule()
    def crash_and_reopen(self) -> None:
        self.instance.simulate_crash()
        self.instance = self._open()
        found = self.read_all()
        candidates = [self.durable, *self.lazy]
        assert found in candidates, "after a crash the state must be a committed prefix"
        self.durable = found
        self.lazy = []

    def read_all(self) -> dict[int, str]:
        with self.instance.database("main").transaction() as txn:
            return {row["k"]: row["v"] for row in txn.table("kv").scan()}

    @invariant()
    def matches_model(self) -> None:
        if self.txn is not None:
            table = self.txn.table("kv")
            assert {r["k"]: r["v"] for r in table.scan()} == self.txn_model
            by_value = [r["v"] for r in table.scan(index="by_v")]
            assert by_value == sorted(self.txn_model.values())
            return
        assert self.read_all() == self.model


EngineVersusDict.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEngineVersusDict = EngineVersusDict.TestCase


class SoakEngineVersusDict(EngineVersusDict):
    pass


SoakEngineVersusDict.TestCase.settings = settings(
    max_examples=1000,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSoakEngineVersusDict = pytest.mark.soak(SoakEngineVersusDict.TestCase)
