"""One writer per run folder: an OS lock (``flock``) on ``<run>/.run.lock`` for the whole run.

``pretrain`` (rank 0 under torchrun) and ``linear-eval`` hold the lock while they write into a run folder;
a second writer is refused at once with :class:`RunFolderBusy`, whose message names the folder and the
holder (pid, host, command, start time, read from ``<run>/.run.lock.owner``). The kernel releases an
``flock`` when its process ends, however it ends (SIGKILL included), so a lock left by a dead process
never blocks a later run: there are no stale locks to detect. DataLoader worker processes inherit the
descriptor but do not release the lock; it is released when the last process holding it ends. On a file
system without ``flock``, the ``filelock`` library falls back to a marker file (see its documentation).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from mvssl_core.atomic import atomic_write

__all__ = ["RunFolderBusy", "hold", "LOCK_NAME", "OWNER_NAME"]

LOCK_NAME = ".run.lock"
OWNER_NAME = ".run.lock.owner"


class RunFolderBusy(FileExistsError):
    """Another process is writing this run folder."""


def _holder(folder: Path) -> str:
    try:
        info = json.loads((folder / OWNER_NAME).read_text(encoding="utf-8"))
        return (f"pid {int(info['pid'])} on {info['host']}, since {info['since']}: {info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


@contextlib.contextmanager
def hold(folder: str | os.PathLike | None, command: str | None = None) -> Iterator[None]:
    """Hold the run folder's lock for the ``with`` block; ``None``: hold nothing (ranks other than 0).

    Args:
        folder: the run folder (created if missing).
        command: what holds it, shown to a refused second writer.

    Raises:
        RunFolderBusy: another process holds the lock (the message names the folder and the holder).
    """
    if folder is None:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderBusy(
            f"run folder {folder} is in use by another process ({_holder(folder)}); wait for it to end, "
            "or use another folder") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command or "python (library call)"}
        atomic_write(folder / OWNER_NAME, lambda f: json.dump(info, f))
        yield
    finally:
        with contextlib.suppress(OSError):
            (folder / OWNER_NAME).unlink()
        lock.release()
