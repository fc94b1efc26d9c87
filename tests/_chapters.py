"""Run a book chapter in a fresh kernel, as the tests do: one runner for every notebook test.

The kernel talks to the client over Unix-domain sockets (ZeroMQ's ``ipc`` transport) in a private
temporary folder rather than over loopback TCP ports: on these machines a kernel's TCP message was
now and then held back for minutes (the run went on after ~300 s), and no port is needed anyway.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nbclient
import nbformat
from jupyter_client.manager import AsyncKernelManager


def execute(nb: nbformat.NotebookNode, cwd: Path, *, allow_errors: bool = False, timeout: int = 300):
    """Execute ``nb`` with the working directory ``cwd``; returns the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell unless
    ``allow_errors``.
    """
    with tempfile.TemporaryDirectory(prefix="mvssl-kernel-") as sockets:
        km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "k"))
        client = nbclient.NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            kernel_name="python3",
            allow_errors=allow_errors,
            resources={"metadata": {"path": str(cwd)}},
        )
        client.execute()
    return nb
