"""Run a book chapter in a fresh kernel, as the tests do: one runner for every notebook test."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat


def execute(nb: nbformat.NotebookNode, cwd: Path, *, allow_errors: bool = False, timeout: int = 300):
    """Execute ``nb`` with the working directory ``cwd``; returns the executed notebook.

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell unless
    ``allow_errors``.
    """
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb
