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


def glue_reference_problems(chapter: Path, nb: nbformat.NotebookNode) -> list[str]:
    """What `make book` would warn about in ``chapter``'s prose, checked without Sphinx: a
    ``{glue:text}`` key glued by no cell or whose format does not apply to the glued value, a
    ``{glue:figure}`` key with no PNG. A chapter without either role is a problem too (the regexes
    would then be checking nothing)."""
    import re

    from myst_nb.core.variables import format_plain_text

    bundles = glued_bundles(nb)
    text = chapter.read_text(encoding="utf-8")
    roles = re.findall(r"\{glue:text\}`([^`]+)`", text)
    figures = re.findall(r"```\{glue:figure\} (\S+)", text)
    problems = [] if roles and figures else [f"{chapter.name}: no {{glue:text}} role or no {{glue:figure}}"]
    for ref in roles:
        key, _, fmt = ref.rpartition(":") if ":" in ref else (ref, "", "s")
        if key not in bundles:
            problems.append(f"{{glue:text}}`{ref}`: nothing glued under {key!r}")
            continue
        try:
            format_plain_text(bundles[key]["text/plain"], fmt or "s")
        except Exception as exc:  # noqa: BLE001 - any failure is what Sphinx would report
            problems.append(f"{{glue:text}}`{ref}`: {exc!r}")
    problems += [f"{{glue:figure}} {key}: no image/png" for key in figures if "image/png" not in bundles.get(key, {})]
    return problems


def figure_problems(chapter: Path, nb: nbformat.NotebookNode) -> list[str]:
    """Why a reader of the executed ``nb`` in JupyterLab would not see every numbered figure of
    ``chapter``: a ``{glue:figure}`` key whose gluing cell does not also display that PNG as an
    output (``{glue:figure}`` does not render in a notebook), or fewer ``image/png`` outputs than
    the chapter has numbered figures. A chapter with no ``{glue:figure}`` is a problem too."""
    import re

    figures = re.findall(r"```\{glue:figure\} (\S+)", chapter.read_text(encoding="utf-8"))
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
