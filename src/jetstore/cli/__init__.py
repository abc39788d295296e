"""The `jetstore` command line: one module per command, wired together in `main`.

* `jetstore.cli.main`: the click group, `--version`, `--help`, the process entry point.
* `jetstore.cli.output`: exit codes, the `--json` envelope, how engine errors are shown.
* `jetstore.cli.demo`: `jetstore demo` (and the child process it kills).
* `jetstore.cli.errors_cmd`: `jetstore error CODE`.

Nothing is imported here, so `python -m jetstore.cli.demo` (the demo's child) starts without
loading the other commands.
"""
