"""The chapters in JupyterLab (issue 14, item 2): `make lab`'s configuration, and numbered figures shown
in a live kernel but only once in the book build (mvssl_core.widgets.show_and_glue).

That every chapter shows each of its numbered figures in a live kernel is checked where the chapters
already run without MVSSL_BOOK_BUILD: tests/test_book.py (``figure_problems``)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml
from _chapters import GLUE_PREFIX, execute

from mvssl_core.widgets import BOOK_ENV, show_and_glue

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ROOT / "scripts" / "jupyterlab_overrides.json"
DOCMANAGER = "@jupyterlab/docmanager-extension:plugin"


# ------------------------------------------------------------------------------------------------
# show_and_glue: in a real kernel, as the chapters call it


def _run_show_and_glue(monkeypatch, book: bool) -> nbformat.NotebookNode:
    if book:
        monkeypatch.setenv(BOOK_ENV, "1")
    else:
        monkeypatch.delenv(BOOK_ENV, raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfrom mvssl_core.widgets import show_and_glue"),
        nbformat.v4.new_code_cell(
            "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([0, 1], [0, 1])\nshow_and_glue('fig_t', fig)"
        ),
        nbformat.v4.new_code_cell("print(plt.get_fignums())"),
    ]
    return execute(nb, ROOT, timeout=120)


def _pngs(cell) -> list[str]:
    return [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]


def _glued_png(cell) -> str:
    glued = [o["data"][GLUE_PREFIX + "image/png"] for o in cell.outputs
             if o.get("metadata", {}).get("scrapbook", {}).get("name") == "fig_t"]
    assert len(glued) == 1, cell.outputs
    return glued[0]


def test_show_and_glue_displays_the_glued_png_once_in_a_live_kernel(monkeypatch):
    nb = _run_show_and_glue(monkeypatch, book=False)
    cell = nb.cells[1]
    pngs = _pngs(cell)
    assert pngs == [_glued_png(cell)]  # shown once (not again by the inline backend), the book's PNG
    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert nb.cells[2].outputs[0]["text"].strip() == "[]"  # the figure was closed


def test_show_and_glue_only_glues_in_the_book_build(monkeypatch):
    nb = _run_show_and_glue(monkeypatch, book=True)
    cell = nb.cells[1]
    assert _pngs(cell) == []  # {glue:figure} places it: no second copy in the page
    assert base64.b64decode(_glued_png(cell))[:4] == b"\x89PNG"
    assert nb.cells[2].outputs[0]["text"].strip() == "[]"


def test_show_and_glue_names_bad_arguments():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with pytest.raises(TypeError, match=r"fig must be a matplotlib Figure, got dict"):
        show_and_glue("fig_x", {"figure": None})
    fig = plt.figure()
    try:
        with pytest.raises(ValueError, match=r"name must be a non-empty glue key, got ''"):
            show_and_glue("", fig)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------
# make lab: its own stamp, its extra, its settings


def _dry_run(tmp_path: Path, target: str) -> str:
    """`make -n target` with a fresh .venv stamp in tmp_path, so the base install counts as done."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}", "LAB_ARGS=--no-browser"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_lab_installs_the_extra_with_its_own_stamp(tmp_path):
    out = _dry_run(tmp_path, "lab")
    venv = tmp_path / "venv"
    assert 'pip install --quiet -e ".[book,dev,lab]"' in out
    assert f"touch {venv}/.installed-lab" in out
    assert f"touch {venv}/.installed\n" not in out  # `make test` / `make book` are not made to reinstall
    assert '-e ".[book,dev]"' not in out and "-m venv" not in out
    assert "ipykernel install --user --name mvssl" in out
    assert f"cp scripts/jupyterlab_overrides.json {venv}/share/jupyter/lab/settings/overrides.json" in out
    lab_line = next(line for line in out.splitlines() if "jupyter lab" in line)
    assert "--ip=127.0.0.1" in lab_line and "--no-browser" in out.split("jupyter lab", 1)[1]


def test_lab_overrides_open_markdown_with_the_jupytext_factory():
    viewers = json.loads(OVERRIDES.read_text(encoding="utf-8"))[DOCMANAGER]["defaultViewers"]
    assert viewers == {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}
    # the name must be the widget factory that the installed jupytext lab extension registers
    from jupyter_core.paths import jupyter_path

    js = [p for d in jupyter_path("labextensions") for p in Path(d, "jupyterlab-jupytext").rglob("*.js")]
    assert js, "jupytext's JupyterLab extension is not installed"
    factories = {m for p in js for m in re.findall(r'FACTORY="([^"]+)"', p.read_text(encoding="utf-8"))}
    assert factories == {"Jupytext Notebook"}


def test_jupyterlab_reads_the_overrides(tmp_path):
    """JupyterLab's own settings reader turns the overrides into the Document Manager's default."""
    pytest.importorskip("jupyterlab", reason="JupyterLab comes with the `lab` extra (make lab)")
    from jupyterlab.commands import get_app_dir
    from jupyterlab_server.settings_utils import get_settings

    settings_dir = tmp_path / "app-settings"
    settings_dir.mkdir()
    (settings_dir / "overrides.json").write_text(OVERRIDES.read_text(encoding="utf-8"), encoding="utf-8")
    found, _ = get_settings(str(settings_dir), str(Path(get_app_dir(), "schemas")), str(tmp_path / "user"),
                            schema_name=DOCMANAGER)
    assert found["schema"]["properties"]["defaultViewers"]["default"]["markdown"] == "Jupytext Notebook"


def test_environment_yml_installs_every_extra():
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
                 ["optional-dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    editable = [line for line in pip if line.startswith("-e .[")]
    assert len(editable) == 1
    assert set(editable[0][len("-e .["):-1].split(",")) == extras


# ------------------------------------------------------------------------------------------------
# Numbers in the prose: {eval}`text("key", "fmt")` (mvssl_core.booktext) renders as {glue:text} did

EVAL_ROLE = re.compile(r"\{eval\}`([^`]+)`")
EVAL_CHAPTERS = sorted(p for p in (ROOT / "book").glob("*.md") if EVAL_ROLE.search(p.read_text(encoding="utf-8")))


def test_some_chapter_uses_eval_roles():
    assert EVAL_CHAPTERS, "no chapter uses {eval} roles"


@pytest.mark.parametrize("chapter", EVAL_CHAPTERS, ids=[p.name for p in EVAL_CHAPTERS])
def test_eval_roles_give_the_glue_text(chapter: Path, monkeypatch):
    """Each {eval} expression of the chapter, evaluated in its kernel after the chapter ran, gives the
    text that {glue:text} formats from the glued value; the chapter sets myst-nb's inline mode and the
    regex every expression matches."""
    from myst_nb.core.variables import format_plain_text

    from _chapters import chapter_errors, check_cell, glued_bundles, run_checks
    from mvssl_core.booktext import EVAL_NAME_REGEX

    monkeypatch.delenv(BOOK_ENV, raising=False)
    source = chapter.read_text(encoding="utf-8")
    exprs = sorted(set(EVAL_ROLE.findall(source)))
    assert all(re.match(EVAL_NAME_REGEX, e) for e in exprs), [e for e in exprs if not re.match(EVAL_NAME_REGEX, e)]
    import jupytext

    mystnb = jupytext.reads(source, fmt="md:myst").metadata.get("mystnb", {})
    assert mystnb == {"execution_mode": "inline", "eval_name_regex": EVAL_NAME_REGEX}
    probe = "import json\nprint(json.dumps({e: repr(eval(e)) for e in %r}))" % exprs
    nb = run_checks(chapter, {"eval": probe})
    assert chapter_errors(nb) == []
    shown = json.loads(check_cell(nb, "eval").outputs[0]["text"])
    bundles = glued_bundles(nb)
    for expr in exprs:
        key, fmt = re.match(r'text\("([^"]+)"(?:, "([^"]*)")?\)', expr).groups()
        assert shown[expr] == format_plain_text(bundles[key]["text/plain"], fmt or "s"), expr


# ------------------------------------------------------------------------------------------------
# No chapter keeps a {glue...} role in its prose (JupyterLab shows it raw), checked without a kernel

ALL_CHAPTERS = sorted((ROOT / "book").glob("*.md"))


@pytest.mark.parametrize("chapter", ALL_CHAPTERS, ids=[p.name for p in ALL_CHAPTERS])
def test_prose_has_no_glue_role_and_valid_eval_roles(chapter: Path):
    """The markdown cells hold no ``{glue}`` / ``{glue:text}`` / ``{glue:md}`` role (``{glue:figure}`` is a
    directive, allowed); every ``{eval}`` is ``text("key"[, "fmt"])`` (EVAL_NAME_REGEX), and a chapter with
    one sets myst-nb's inline mode, without which the book would not evaluate it."""
    import jupytext
    from _chapters import EVAL_ROLE, GLUE_ROLE

    from mvssl_core.booktext import EVAL_NAME_REGEX

    nb = jupytext.read(chapter)
    prose = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert [m.group(0) for src in prose for m in GLUE_ROLE.finditer(src)] == []
    exprs = [e for src in prose for e in EVAL_ROLE.findall(src)]
    assert [e for e in exprs if not re.match(EVAL_NAME_REGEX, e)] == []
    if exprs:
        assert nb.metadata.get("mystnb") == {"execution_mode": "inline", "eval_name_regex": EVAL_NAME_REGEX}


def _glue_output(name: str, plain: str) -> dict:
    """A cell output as ``myst_nb.glue(name, value, display=False)`` writes it."""
    return nbformat.v4.new_output("display_data", data={GLUE_PREFIX + "text/plain": plain},
                                  metadata={"scrapbook": {"name": name, "mime_prefix": GLUE_PREFIX}})


def test_eval_role_problems_evaluates_each_role_where_it_stands():
    """Kernel-free, in inline order: a key glued below its prose, a format that does not apply, an
    expression outside EVAL_NAME_REGEX and a raw {glue:text} role are each reported; the rest pass."""
    from _chapters import eval_role_problems

    glued = nbformat.v4.new_code_cell("glue(...)")
    glued.outputs = [_glue_output("a", "0.12345"), _glue_output("s", "'word'")]
    late = nbformat.v4.new_code_cell("glue(...)")
    late.outputs = [_glue_output("b", "2")]
    md = nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook(cells=[
        md('{eval}`text("a", ".2f")`'),                                   # 0: glued only in cell 1
        glued,
        md('{eval}`text("a", ".2f")` {eval}`text("s")` {eval}`text("b")`'),  # 2: b glued in cell 4
        md('{eval}`text("s", ".2f")` {eval}`1 + 1` {glue:text}`a:.2f`'),  # 3: bad format, regex, raw
        late,
        md('{eval}`text("b")`'),                                           # 5: fine
    ])
    problems = eval_role_problems(nb)
    assert [p.split(":")[0] for p in problems] == ["cell 0", "cell 2", "cell 3", "cell 3", "cell 3"]
    assert "KeyError" in problems[0] and "'a'" in problems[0]
    assert "KeyError" in problems[1] and "'b'" in problems[1]
    assert "raw role {glue:text}`" in problems[2]
    assert 'text("s", ".2f")' in problems[3] and "ValueError" in problems[3]
    assert "{eval}`1 + 1` does not match EVAL_NAME_REGEX" in problems[4]


def test_glue_to_eval_converts_roles_import_and_front_matter():
    """scripts/glue_to_eval.py: each role, the import and the front matter; a rerun changes nothing;
    a key {eval} cannot hold is refused, naming the role."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("glue_to_eval", ROOT / "scripts" / "glue_to_eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from mvssl_core.booktext import EVAL_NAME_REGEX

    src = ("---\nkernelspec:\n  name: python3\n---\n\n```{code-cell} ipython3\nfrom myst_nb import glue\n```\n\n"
           "$k = $ {glue:text}`k` and {glue:text}`x:.2f` nats.\n")
    out, n = script.convert(src)
    assert n == 2
    assert "$k = $ {eval}`text(\"k\")` and {eval}`text(\"x\", \".2f\")` nats.\n" in out
    assert "from mvssl_core.booktext import glue, text\n" in out and "myst_nb" not in out
    front = yaml.safe_load(out.split("---\n")[1])
    assert front["mystnb"] == {"execution_mode": "inline", "eval_name_regex": EVAL_NAME_REGEX}
    assert script.convert(out) == (out, 0)
    with pytest.raises(script.ConvertError, match=r"\{glue:text\}`a-b:\.2f`: key 'a-b'"):
        script.convert(src.replace("{glue:text}`x:.2f`", "{glue:text}`a-b:.2f`"))
