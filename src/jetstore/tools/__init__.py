"""Offline database tools: integrity check, compaction, repair, export and import.

One module per job, each a library function the `jetstore` CLI calls (`jetstore.cli.tools_cmd`):

* `jetstore.tools.dbfile`: reading a database file without an instance (shared);
* `jetstore.tools.layout`: the entries a record implies (index entries, long values);
* `jetstore.tools.integrity`: `check_integrity` (esentutl /g);
* `jetstore.tools.rebuild`: writing a new, dense database file from sorted entries;
* `jetstore.tools.compact`: `compact_database` (esentutl /d);
* `jetstore.tools.repair`: `repair_database` (esentutl /p);
* `jetstore.tools.values`: the text forms of column values in JSON lines and CSV;
* `jetstore.tools.export`: `export_table`;
* `jetstore.tools.importer`: `import_rows`;
* `jetstore.tools.checksum`: the page and block checks of `jetstore checksum`.
"""
