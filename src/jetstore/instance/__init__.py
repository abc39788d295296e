"""The instance layer: open/close, attached databases, checkpoints, recovery, events."""
