"""Reading the small files an operator names: policies, playbooks, reviewers, tokens, keys.

Read with a bound: `/dev/zero` or a log file named by mistake was read whole, until memory
ran out or forever. What goes wrong is raised as an OSError whose `strerror` says it in
words, so each caller's "cannot read the … file PATH: …" already says it.
"""

from __future__ import annotations

import errno
from pathlib import Path

MAX_FILE_BYTES = 4 * 1024 * 1024  # far above any policy, playbook or reviewers file


def read_bytes(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """Return a file's bytes; OSError (EFBIG) if it holds more than `limit`."""
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        said = f"it holds more than {limit // 1024} KiB; is it the file you meant?"
        raise OSError(errno.EFBIG, said, str(path))
    return data


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """Return a file's UTF-8 text; OSError (EILSEQ) if it is not UTF-8, as `read_bytes` else."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        said = f"it is not UTF-8 text (byte {exc.start} is not); is it the file you meant?"
        raise OSError(errno.EILSEQ, said, str(path)) from None
