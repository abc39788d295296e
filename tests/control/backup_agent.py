"""A backup client process for the control socket tests: reads one JSON command per line on
stdin, takes the backup it asks for through `jetstore.control.client`, answers one JSON line.

Command: {"dir": INSTANCE_DIR, "dest": DEST, "kind": "full", "mode": MODE, "compress": bool}
Modes: "complete" (a whole backup), "abort" (the client aborts after the first chunk),
"fail" (the destination's second write fails with ENOSPC), "kill" (after the first chunk it
says {"midstream": true} and sleeps until the parent SIGKILLs it), "stall" (same, but the
parent waits for the server's stall timeout instead).
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import Any

from jetstore.control.client import connect
from jetstore.errors import JetError
from jetstore.io.files import FileSystem, IOEvent


class _Stop(Exception):
    pass


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run(command: dict[str, Any]) -> dict[str, Any]:
    mode = command["mode"]
    dest = command["dest"]
    writes = 0

    def hook(event: IOEvent) -> None:
        nonlocal writes
        if event.op == "write" and not event.path.endswith(".jetstore-partial"):
            writes += 1
            if writes == 2:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

    def progress(done: int, total: int, name: str) -> None:
        if done == 0:
            return
        if mode == "abort":
            raise _Stop()
        if mode in ("kill", "stall"):
            _say({"midstream": True, "name": name, "done": done})
            time.sleep(600)

    fs = FileSystem(hook=hook) if mode == "fail" else None
    client = connect(command["dir"])
    try:
        manifest = client.backup(
            dest, command["kind"], compress=command.get("compress", False), progress=progress, fs=fs
        )
    except _Stop:
        return {"ok": True, "aborted": True, "dest_exists": os.path.exists(dest)}
    except JetError as exc:
        return {
            "ok": mode == "fail",
            "error": exc.name,
            "message": str(exc),
            "dest_exists": os.path.exists(dest),
            "partial_exists": os.path.exists(dest + ".partial"),
        }
    completion = client.completion or {}
    return {
        "ok": mode == "complete",
        "completed": True,
        "files": [f.name for f in manifest.files],
        "generation_low": manifest.generation_low,
        "generation_high": manifest.generation_high,
        "truncated": (completion.get("result") or {}).get("truncated", []),
    }


def main() -> None:
    _say({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        _say(run(json.loads(line)))


if __name__ == "__main__":
    main()
