"""A Ctrl-C that lands as `FileSystem.open` returns, before a `with` took the file, must not
leave the file open: the commands' short reads and copies open through `FileSystem.opened`,
whose `finally` is entered before the open (`jetstore.io.files`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interrupting import interrupt_as_open_returns
from jetstore.cli.dump import header_result
from jetstore.cli.logs_cmd import _databases_needing_logs
from jetstore.cli.recover import copy_instance
from jetstore.io.files import FileSystem
from jetstore.io.handles import HandleRegistry
from jetstore.tools.repair import _guess_page_size


@pytest.mark.parametrize("site", ["dump header", "repair guess", "logs verify", "recover copy"])
def test_an_interrupt_as_open_returns_leaves_no_file_open(
    closed: Path, tmp_path: Path, site: str
) -> None:
    registry = HandleRegistry("interrupted-open")
    fs = FileSystem(registry)
    database = str(closed / "main.edb")
    with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns("main.edb"):
        if site == "dump header":
            header_result(fs, database)
        elif site == "repair guess":
            _guess_page_size(fs, database)
        elif site == "logs verify":
            _databases_needing_logs(fs, str(closed))
        else:
            copy_instance(fs, str(closed), str(tmp_path / "copy"), show_progress=False)
    assert [h.description for h in registry.open_handles()] == []
