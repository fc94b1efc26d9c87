"""Atomic file writes: the one way this package writes checkpoints, configs and results.

The content goes to a temporary file in the destination's folder, is flushed to disk, then renamed
over the destination with ``os.replace``. A reader sees the old file or the new one, never half of
one; if writing fails, the temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it over ``path``.

    Args:
        path: destination; its folder is created if needed.
        write: writes the content to the open file object it is given.
        binary: open the temporary file in binary mode (else text, UTF-8).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; these files are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
