"""The engine version, in one place (imported by formats that record it)."""

__version__ = "0.1.0"
