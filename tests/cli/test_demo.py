"""`jetstore demo`: the crash demo passes end to end, and reports a child that dies by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jetstore.cli import demo
from jetstore.cli.main import run


def _entry_point() -> Path:
    script = Path(sys.executable).with_name("jetstore")
    if not script.exists():
        pytest.skip("the jetstore entry point is not installed in this environment")
    return script


def test_demo_kills_recovers_and_loses_nothing(tmp_path: Path) -> None:
    instance_dir = tmp_path / "instance"
    done = subprocess.run(
        [str(_entry_point()), "demo", "--json", "--kill-after", "1.0", "--dir", str(instance_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    document = json.loads(done.stdout)
    assert (document["schema"], document["ok"], document["command"]) == (1, True, "demo")
    result = document["result"]
    assert result["acknowledged"] > 0
    assert result["missing"] == 0
    assert result["partial"] == 0
    assert result["wrong_content"] == 0
    assert result["records_found"] == result["acknowledged"]
    assert result["unacknowledged_committed"] <= 2
    assert result["handles_after_close"] == 0
    assert result["child"]["killed"] is True
    assert result["child"]["returncode"] == -9
    assert all(check["ok"] for check in result["checks"])
    # --dir was given: the files stay for inspection.
    assert (instance_dir / "main.edb").exists()


def test_child_dying_on_its_own_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    crashing_child = (
        "import sys; print('READY 1', flush=True); "
        "sys.stderr.write('child exploded\\n'); sys.exit(3)"
    )

    def child_argv(directory: str, seed: int) -> list[str]:
        return [sys.executable, "-c", crashing_child]

    monkeypatch.setattr(demo, "_child_argv", child_argv)
    code = run(["demo", "--json", "--kill-after", "5", "--dir", str(tmp_path / "i")])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert code == 1
    assert document["ok"] is False
    result = document["result"]
    assert result["child"]["killed"] is False
    assert result["child"]["returncode"] == 3
    assert "child exploded" in result["child"]["stderr"]
    failed = {check["name"] for check in result["checks"] if not check["ok"]}
    assert failed == {"child killed mid-stream", "acknowledged commits"}


def test_dir_must_be_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "something").write_text("x")
    assert run(["demo", "--dir", str(tmp_path)]) == 2
    # The console wraps long lines at its width (which depends on the path's length).
    assert "not empty" in " ".join(capsys.readouterr().err.split())


def test_child_that_never_gets_ready_is_killed_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def child_argv(directory: str, seed: int) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    monkeypatch.setattr(demo, "_child_argv", child_argv)
    monkeypatch.setattr(demo, "READY_TIMEOUT", 0.5)
    assert run(["demo", "--dir", str(tmp_path / "i")]) == 1
    out = capsys.readouterr().out
    assert "never ready" in out
    assert "FAILED" in out


@pytest.mark.parametrize("seconds", ["nan", "NaN", "0", "61", "inf"])
def test_kill_after_outside_its_range_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    # Defect: NaN compares false with both bounds of click's FloatRange, so it passed; the
    # child was never killed (now - ready >= nan is never true) and the demo ran until the
    # child stopped by itself two minutes later.
    code = run(["demo", "--kill-after", seconds, "--dir", str(tmp_path / "i"), "--json"])
    assert code == 2
    document = json.loads(capsys.readouterr().out)
    assert "--kill-after" in document["error"]["message"]
    assert not (tmp_path / "i").exists()
