"""The `jetstore` command line: one module per command, wired together in `main`.

* `jetstore.cli.main`: the click group, `--version`, `--help`, the process entry point.
* `jetstore.cli.output`: exit codes, the `--json` envelope, how engine errors are shown.
* `jetstore.cli.demo`: `jetstore demo` (and the child process it kills).
* `jetstore.cli.errors_cmd`: `jetstore error CODE`.
* `jetstore.cli.dump`: `jetstore dump header|checkpoint|logs` (read-only).
* `jetstore.cli.logs_cmd`: `jetstore logs verify|removable`.
* `jetstore.cli.recover`: `jetstore recover DIR [--accept-data-loss] [--into COPY]`.
* `jetstore.cli.events_cmd`: `jetstore events DIR`.
* `jetstore.cli.counters`: `jetstore counters DIR`.
* `jetstore.cli.support`: what the admin commands share (value formats, the instance-in-use
  check, the options to open an existing instance with, progress on stderr).

Nothing is imported here, so `python -m jetstore.cli.demo` (the demo's child) starts without
loading the other commands.
"""
