"""Run a book chapter in a fresh kernel, as the tests do: one runner for every notebook test."""

from __future__ import annotations

import re
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


# The numbers in a chapter's prose: {eval}`text("key")` / {eval}`text("key", "fmt")` (mvssl_core.booktext).
EVAL_ROLE = re.compile(r"\{eval\}`([^`]*)`")
TEXT_EXPR = re.compile(r'text\("([^"]+)"(?:, "([^"]*)")?\)')
# roles that JupyterLab leaves raw: {glue}`key`, {glue:}`key`, {glue:text}`key:fmt`, {glue:md}`key`, ...
GLUE_ROLE = re.compile(r"\{glue(?::[a-z]*)?\}`")
FIGURE_DIRECTIVE = re.compile(r"```\{glue:figure\} (\S+)")


def prose_refs(source: str) -> list[tuple[str, str]]:
    """``(key, fmt)`` of every ``{eval}`text("key", "fmt")``` role in a chapter's ``source`` (fmt "s"
    when the role gives none), in order."""
    matches = (TEXT_EXPR.fullmatch(expr) for expr in EVAL_ROLE.findall(source))
    return [(m.group(1), "s" if m.group(2) is None else m.group(2)) for m in matches if m]


def prose_keys(source: str) -> set[str]:
    """The glue keys a chapter's ``source`` shows: its ``{eval}`text(...)``` keys and ``{glue:figure}`` keys."""
    return {key for key, _ in prose_refs(source)} | set(FIGURE_DIRECTIVE.findall(source))


def eval_role_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Why an ``{eval}`` role of the executed ``nb`` would not show its number, checked without a kernel,
    in the order myst-nb's inline mode and JupyterLab evaluate them: each markdown cell's roles are
    evaluated with :func:`mvssl_core.booktext.text` knowing only what the code cells *above* it glued.

    A problem is an expression that does not match ``EVAL_NAME_REGEX`` (myst-nb refuses it), a key glued
    by no cell above (``KeyError``), or a format that does not apply to the glued value. Also a
    ``{glue...}`` role left in a markdown cell, which JupyterLab shows raw."""
    from unittest import mock

    from mvssl_core import booktext

    problems: list[str] = []
    glued: dict[str, str] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            for o in cell.get("outputs", []):
                name = o.get("metadata", {}).get("scrapbook", {}).get("name")
                plain = o.get("data", {}).get(GLUE_PREFIX + "text/plain")
                if name and plain is not None:
                    glued[name] = plain
            continue
        if cell.cell_type != "markdown":
            continue
        problems += [f"cell {index}: raw role {m.group(0)}..." for m in GLUE_ROLE.finditer(cell.source)]
        with mock.patch.dict(booktext._TEXT, glued, clear=True):
            for expr in EVAL_ROLE.findall(cell.source):
                if not re.match(booktext.EVAL_NAME_REGEX, expr):
                    problems.append(f"cell {index}: {{eval}}`{expr}` does not match EVAL_NAME_REGEX")
                    continue
                try:
                    eval(expr, {"__builtins__": {}}, {"text": booktext.text})  # noqa: S307 - matched the regex
                except Exception as exc:  # noqa: BLE001 - any failure is what the reader would see
                    problems.append(f"cell {index}: {{eval}}`{expr}`: {exc!r}")
    return problems


def glue_reference_problems(chapter: Path, nb: nbformat.NotebookNode) -> list[str]:
    """What `make book` would warn about in ``chapter``'s prose, checked without Sphinx: an
    ``{eval}`text(...)``` role whose key is not glued above it or whose format does not apply
    (:func:`eval_role_problems`), a ``{glue:figure}`` key with no PNG. A chapter without either an
    ``{eval}`` role or a ``{glue:figure}`` is a problem too (the regexes would then be checking nothing)."""
    bundles = glued_bundles(nb)
    source = chapter.read_text(encoding="utf-8")
    figures = FIGURE_DIRECTIVE.findall(source)
    problems = [] if prose_refs(source) and figures else [f"{chapter.name}: no {{eval}} role or no {{glue:figure}}"]
    problems += eval_role_problems(nb)
    problems += [f"{{glue:figure}} {key}: no image/png" for key in figures if "image/png" not in bundles.get(key, {})]
    return problems


def figure_problems(chapter: Path, nb: nbformat.NotebookNode) -> list[str]:
    """Why a reader of the executed ``nb`` in JupyterLab would not see every numbered figure of
    ``chapter``: a ``{glue:figure}`` key whose gluing cell does not also display that PNG as an
    output (``{glue:figure}`` does not render in a notebook), or fewer ``image/png`` outputs than
    the chapter has numbered figures. A chapter with no ``{glue:figure}`` is a problem too."""
    figures = FIGURE_DIRECTIVE.findall(chapter.read_text(encoding="utf-8"))
    if not figures:
        return [f"{chapter.name}: no {{glue:figure}} directive"]
    shown: dict[str, bool] = {}
    n_png = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
        n_png += len(pngs)
        for o in outputs:
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            glued = o.get("data", {}).get(GLUE_PREFIX + "image/png")
            if name in figures and glued is not None:
                shown[name] = glued in pngs
    problems = [f"{{glue:figure}} {key}: glued but not displayed in its cell" for key in figures if not shown.get(key)]
    if n_png < len(figures):
        problems.append(f"{chapter.name}: {n_png} image/png outputs < {len(figures)} numbered figures")
    return problems
