"""The book's chapters run: every page listed in _toc.yml exists, and every notebook page executes
without a cell error in a fresh kernel (the same check `make book` makes, without Sphinx), as a
reader's JupyterLab runs it (no MVSSL_BOOK_BUILD): there every numbered figure is shown in the
notebook, since `{glue:figure}` does not render outside the book, and every ``{eval}`` number of the
prose evaluates where it stands (``eval_role_problems``)."""

from __future__ import annotations

from pathlib import Path

import jupytext
from _chapters import eval_role_problems, execute, figure_problems
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".md", ".ipynb")


def _toc_entries(node: object) -> list[str]:
    """Every `root:` and `file:` value of a Jupyter Book 1 _toc.yml, in order."""
    found: list[str] = []
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                found.append(node[key])
        for value in node.values():
            if isinstance(value, (dict, list)):
                found.extend(_toc_entries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_toc_entries(item))
    return found


def _resolve(entry: str) -> Path | None:
    """The source file of a toc entry (given with or without its suffix), or None."""
    path = ROOT / entry
    if path.suffix in SUFFIXES and path.is_file():
        return path
    matches = [c for c in (path.with_name(path.name + s) for s in SUFFIXES) if c.is_file()]
    return matches[0] if len(matches) == 1 else None


TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
ENTRIES = _toc_entries(TOC)


def _is_notebook(path: Path) -> bool:
    """A page with code to run: an .ipynb, or MyST markdown with a kernelspec and code cells."""
    nb = jupytext.read(path)
    has_code = any(cell.cell_type == "code" for cell in nb.cells)
    return has_code and (path.suffix == ".ipynb" or "kernelspec" in nb.metadata)


CHAPTERS = [p for p in (_resolve(e) for e in ENTRIES) if p is not None and _is_notebook(p)]


def test_toc_lists_only_existing_files():
    assert TOC.get("format") == "jb-book", "_toc.yml must be a Jupyter Book 1 'jb-book' toc"
    assert ENTRIES, "_toc.yml lists no pages"
    missing = [e for e in ENTRIES if _resolve(e) is None]
    assert not missing, f"_toc.yml lists pages with no (unique) .md/.ipynb file: {missing}"
    assert len(set(ENTRIES)) == len(ENTRIES), "_toc.yml lists a page twice"


def test_there_are_chapters_to_run():
    assert CHAPTERS, "no executable chapter found in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=[str(p.relative_to(ROOT)) for p in CHAPTERS])
def test_chapter_executes_without_errors(path: Path, monkeypatch):
    monkeypatch.delenv("MVSSL_BOOK_BUILD", raising=False)  # the kernel inherits it: run as in JupyterLab
    nb = jupytext.read(path)
    execute(nb, path.parent)  # raises CellExecutionError, naming the cell, on the first failing cell
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: cell errors {[e.get('ename') for e in errors]}"
    if "{glue:figure}" in path.read_text(encoding="utf-8"):
        assert figure_problems(path, nb) == []  # each numbered figure shown where it is glued
    # each {eval} number of the prose is filled in where it stands (myst-nb inline mode, JupyterLab):
    # booktext.text of a key glued by a cell above it, checked without the kernel
    assert eval_role_problems(nb) == []
