"""On-disk formats: pure encode/decode and CRC32C checksums, no I/O.

Every persistent structure of jetstore is described here, field by field, in the docstring of
the module that encodes it (docs/design.md collects them). Decoders never raise anything but
`jetstore.errors.JetError` subclasses, whatever bytes they are given.
"""
