"""Online and offline backup, backup sets, and restore (issue 4).

- `session`: `BackupSession`, what `Instance.begin_backup` returns: files listed, streamed
  verified, then completed (history, truncation) or aborted (nothing changes).
- `image`: a database image at one header (pinned tree pages verified, a fresh free list).
- `logcopy`: a closed log generation copied with every frame and the chain link checked.
"""
