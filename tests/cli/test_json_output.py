"""`--json` output is strict JSON whatever a result holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jetstore.cli.main import run
from jetstore.cli.output import finish, json_option
from jetstore.tables.schema import ColumnType
from jetstore.tools.values import from_json


def _strict(text: str) -> object:
    def refuse(token: str) -> object:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@click.command("probe")
@json_option
def _probe(as_json: bool) -> None:
    result = {
        "nan": math.nan,
        "values": [math.inf, (1.5, -math.inf)],
        "nested": {"x": -0.0, "y": math.nan},
    }
    finish("probe", as_json=as_json, ok=True, result=result)


def test_non_finite_floats_in_a_result_are_written_as_strings() -> None:
    # Defect: emit_json wrote NaN, Infinity and -Infinity, tokens no JSON parser but
    # Python's accepts. They are now the strings export writes for a float column, which
    # import reads back as the same float.
    done = CliRunner().invoke(_probe, ["--json"])
    assert done.exit_code == 0, done.output
    document = _strict(done.stdout)
    assert isinstance(document, dict)
    result = document["result"]
    assert result == {
        "nan": "nan",
        "values": ["inf", [1.5, "-inf"]],
        "nested": {"x": -0.0, "y": "nan"},
    }
    nan = from_json(ColumnType.FLOAT, result["nan"])
    assert isinstance(nan, float) and math.isnan(nan)
    assert from_json(ColumnType.FLOAT, result["values"][0]) == math.inf
    assert from_json(ColumnType.FLOAT, result["values"][1][1]) == -math.inf


@pytest.mark.parametrize("value", [0.1, 1e308, -5e-324])
def test_finite_floats_are_written_as_numbers(value: float) -> None:
    @click.command("probe")
    @json_option
    def probe(as_json: bool) -> None:
        finish("probe", as_json=as_json, ok=True, result={"v": value})

    done = CliRunner().invoke(probe, ["--json"])
    document = _strict(done.stdout)
    assert isinstance(document, dict) and document["result"]["v"] == value


def test_an_interrupted_command_still_prints_its_one_json_object(
    closed: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Defect: Ctrl-C under --json printed "aborted" on stderr and nothing on stdout, where a
    # script reading the one promised JSON object found none.
    from jetstore.cli import tools_cmd

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tools_cmd, "check_integrity", interrupted)
    code = run(["integrity", str(closed / "main.edb"), "--json"])
    captured = capsys.readouterr()
    assert code == 130
    document = json.loads(captured.out)
    assert document["ok"] is False and document["command"] == "integrity"
    assert document["error"]["category"] == "interrupted"
    assert document["error"]["exit_code"] == 130
    code = run(["integrity", str(closed / "main.edb")])
    captured = capsys.readouterr()
    assert code == 130 and captured.out == "" and "aborted" in captured.err
