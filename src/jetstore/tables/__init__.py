"""Tables layer: schema, catalog, key and record codecs, long values, table API, cursors.

The pure codecs live in ``keys`` (order-preserving key tuples), ``schema`` (column, index and
table definitions and their catalog encoding) and ``records`` (row values).
"""
