"""`jetstore error CODE`, `--help` and `--version`: number forms, JSON, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jetstore import __version__
from jetstore.cli.main import run
from jetstore.cli.output import ExitCode, exit_code_for
from jetstore.errors import InstanceNameInUse

FORMS_OF_1811 = ["-1811", "4294965485", "0xfffff8ed", "0xFFFFF8ED"]


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out
    document = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize("form", FORMS_OF_1811)
def test_every_form_of_1811_is_file_not_found_json(
    form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["error", form, "--json"]) == 0
    document = _json(capsys)
    assert document["schema"] == 1
    assert document["ok"] is True
    assert document["command"] == "error"
    result = document["result"]
    assert isinstance(result, dict)
    assert result["name"] == "FileNotFound"
    assert result["ese_name"] == "JET_errFileNotFound"
    assert (result["signed"], result["unsigned"], result["hex"]) == (
        -1811,
        4294965485,
        "0xfffff8ed",
    )
    assert result["category"] == "io"
    assert result["exit_code"] == 4
    assert result["description"] and result["hint"]


@pytest.mark.parametrize("form", FORMS_OF_1811)
def test_every_form_of_1811_is_file_not_found_human(
    form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["error", form]) == 0
    out = capsys.readouterr().out
    assert "JET_errFileNotFound" in out
    assert "-1811" in out and "4294965485" in out and "0xfffff8ed" in out
    assert "what to do" in out


@pytest.mark.parametrize("name", ["FileNotFound", "JET_errFileNotFound", "jet_errfilenotfound"])
def test_a_name_works(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["error", "--json", name]) == 0
    result = _json(capsys)["result"]
    assert isinstance(result, dict)
    assert result["code"] == -1811


def test_other_categories_report_their_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["error", "InvalidParameter", "--json"]) == 0
    result = _json(capsys)["result"]
    assert isinstance(result, dict)
    assert (result["code"], result["category"], result["exit_code"]) == (-1003, "usage", 2)


def test_instance_in_use_reports_the_exit_code_commands_end_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every admin command ends an instance in use with 3 (a wrong state: cli.md), but
    # `jetstore error -1086` said 5 from the category alone, the code that means "a bug".
    assert run(["error", "-1086", "--json"]) == 0
    result = _json(capsys)["result"]
    assert isinstance(result, dict)
    assert (result["name"], result["category"], result["exit_code"]) == (
        "InstanceNameInUse",
        "conflict",
        3,
    )
    assert exit_code_for(InstanceNameInUse("held")) == ExitCode.STATE
    assert run(["error", "DatabaseDuplicate", "--json"]) == 0
    result = _json(capsys)["result"]
    assert isinstance(result, dict)
    assert result["exit_code"] == 2  # as compact --keep-original ends it


@pytest.mark.parametrize("code", ["1811", "-2", "bogus", "0x1ffffffff"])
def test_unknown_code_exits_2_with_a_clear_message(
    code: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["error", code]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert "error: JET_errInvalidParameter" in captured.err
    assert "what to do" in captured.err


def test_unknown_code_json_error_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["error", "1811", "--json"]) == 2
    document = _json(capsys)
    assert document["ok"] is False
    assert "result" not in document
    error = document["error"]
    assert isinstance(error, dict)
    assert error["name"] == "InvalidParameter"
    assert error["exit_code"] == 2
    assert "did you mean -1811" in str(error["detail"])


def test_missing_code_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["error"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("demo", "error", "Exit codes", "wrong database state", "I/O error"):
        assert word in out
    assert run(["error", "--help"]) == 0
    assert "0xfffff8ed" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jetstore {__version__}"


def test_installed_entry_point_takes_a_negative_number() -> None:
    # The real argv path: "-1811" must reach CODE, not be parsed as an option by click.
    script = Path(sys.executable).with_name("jetstore")
    if not script.exists():
        pytest.skip("the jetstore entry point is not installed in this environment")
    done = subprocess.run(
        [str(script), "error", "-1811", "--json"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["name"] == "FileNotFound"
    done = subprocess.run(
        [str(script), "error", "12345"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
