"""Database pages: the page file (header pair, page I/O, free space), the node cache and the
copy-on-write B+tree (`jetstore.pages.btree`) that every database file holds one of.
"""
