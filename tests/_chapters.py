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


# ------------------------------------------------------------------------------------------------
# Chapters run with appended check cells: one tagged cell per check, every cell run, each test reads
# the outputs of its own cell.

CHECK_TAG = "check:"
GLUE_PREFIX = "application/papermill.record/"


def run_checks(chapter: Path, checks: dict[str, str], *, prelude: dict[str, str] | None = None
               ) -> nbformat.NotebookNode:
    """Execute ``chapter`` (a MyST notebook) with a code cell per check appended, tagged ``check:<name>``
    (``prelude`` cells first); errors are kept in the outputs, not raised."""
    import jupytext

    nb = jupytext.read(chapter)
    for name, source in {**(prelude or {}), **checks}.items():
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = [f"{CHECK_TAG}{name}"]
        nb.cells.append(cell)
    return execute(nb, chapter.parent, allow_errors=True)


def _is_check(cell) -> bool:
    return any(t.startswith(CHECK_TAG) for t in cell.metadata.get("tags", []))


def check_cell(nb: nbformat.NotebookNode, name: str):
    """The one appended cell of check ``name``."""
    cells = [c for c in nb.cells if f"{CHECK_TAG}{name}" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0]


def check_errors(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """The errors (name, message and traceback) raised by check ``name``."""
    return [f"{o['ename']}: {o['evalue']}\n" + "\n".join(o.get("traceback", []))
            for o in check_cell(nb, name).get("outputs", []) if o.get("output_type") == "error"]


def chapter_errors(nb: nbformat.NotebookNode) -> list[str]:
    """``ename: evalue`` of every error raised by the chapter's own cells (not the checks)."""
    return [f"{o['ename']}: {o['evalue']}" for c in nb.cells if c.cell_type == "code" and not _is_check(c)
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


def glued_bundles(nb: nbformat.NotebookNode) -> dict[str, dict]:
    """name -> mime bundle (``text/plain``, ``image/png``, ...; glue's prefix stripped) of every glue()."""
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                out[name] = {k.removeprefix(GLUE_PREFIX): v for k, v in o.get("data", {}).items()}
    return out


def glued_values(nb: nbformat.NotebookNode) -> dict[str, object]:
    """name -> the glued value decoded from its text form (the text itself when it is not a literal;
    None when there is none)."""
    import ast

    values = {}
    for name, bundle in glued_bundles(nb).items():
        text = bundle.get("text/plain")
        try:
            values[name] = None if text is None else ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text
    return values
