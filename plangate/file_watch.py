"""Whether a file changed since it was last read: its inode, modification time and size.

For files an operator edits while plangate runs (the reviewers file, the policy): a change is
seen at the next look, an editor's save-by-rename included (a new inode).
"""

from __future__ import annotations

from pathlib import Path


class FileWatch:
    """Remembers a file's stamp; `changed()` says whether it moved since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            status = self.path.stat()
        except OSError:
            return None  # missing for now (mid-rename): a change like any other
        return (status.st_ino, status.st_mtime_ns, status.st_size)

    def changed(self) -> bool:
        """Return True once for each change since the last call (or since the watch began)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True
