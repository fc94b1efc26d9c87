"""The built HTML book in a real browser.

Every page listed in _toc.yml is opened from _build/html in headless Chromium, which runs the
page's JavaScript (MathJax, the offline widget manager) and dumps the resulting DOM. Each page must
load with no console error beyond the two known harmless ones, have its math typeset by MathJax,
show its figures and, where it has an `interact`, its sliders, and contain no cell traceback.
A screenshot of each page is saved under _build/screenshots/ for a person to look at.

Needs the built book: when _build/html is missing or older than the book's sources, the session
fixture builds it with `make book`. Needs Debian's `chromium` (`make test` installs it when run as
root); without it these tests are skipped, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_book import ENTRIES, _resolve  # the pages of _toc.yml and their source files

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
PAGES = [e for e in ENTRIES if _resolve(e) is not None]

# Sources whose change makes the built HTML stale (chapters, config, bibliography, static files).
BUILD_INPUTS = ["_config.yml", "_toc.yml", "book/references.bib", "book/_static", "mvssl_core/widgets.py"]

# Printed on every page by the theme and sphinx-thebe; neither affects the book.
HARMLESS = ("Identifier 'THEBE_JS_URL' has already been declared", "Got invalid theme mode")
# A console message is an error when it is an uncaught exception, a failed load or a logged Error.
CONSOLE_ERROR = re.compile(r"Uncaught|\b\w*Error\b|Failed to load|net::ERR_|Refused to")
# Chromium's log line for a console message: ...:CONSOLE:62] "message", source: url (62)
CONSOLE_LINE = re.compile(r':CONSOLE[:(][^\]]*\]\s*"(?P<msg>.*)", source: (?P<src>\S*)')

CHROMIUM_TIMEOUT_S = 90
VIRTUAL_TIME_MS = 10_000  # virtual time for scripts to finish: MathJax, widget rendering


@dataclass
class Rendered:
    static_html: str  # the file as built
    dom: str  # the DOM after the page's scripts ran
    console: list[str]  # every console message, "message (source)"
    screenshot: Path


def _html_path(entry: str) -> Path:
    return HTML / Path(entry).with_suffix(".html")


def _newest_input() -> float:
    paths = [_resolve(e) for e in PAGES]
    for name in BUILD_INPUTS:
        path = ROOT / name
        paths.extend(path.rglob("*") if path.is_dir() else [path])
    return max(p.stat().st_mtime for p in paths if p is not None and p.is_file())


def _stale() -> list[str]:
    newest = _newest_input()
    pages = [_html_path(e) for e in PAGES]
    return [str(p.relative_to(ROOT)) for p in pages if not p.is_file() or p.stat().st_mtime < newest]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(url: str, screenshot: Path, timeout: float = CHROMIUM_TIMEOUT_S,
                 virtual_time_ms: int = VIRTUAL_TIME_MS) -> tuple[str, list[str]]:
    """Open `url` in headless Chromium: save a screenshot, return (DOM after scripts, console lines).
    `virtual_time_ms` is the virtual time the page's scripts get before the DOM is dumped."""
    with tempfile.TemporaryDirectory(prefix="mvssl-chromium-") as profile:
        cmd = [
            _chromium(),
            "--headless",
            "--no-sandbox",  # needed as root; harmless otherwise (the pages are our own files)
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1280,2400",
            f"--virtual-time-budget={virtual_time_ms}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode} on {url}:\n{proc.stderr[-3000:]}")
    console = [f"{m['msg']} ({m['src']})" for m in map(CONSOLE_LINE.search, proc.stderr.splitlines()) if m]
    return proc.stdout, console


@pytest.fixture(scope="session")
def built_book() -> Path:
    """_build/html, built with `make book` when missing or older than the book's sources."""
    stale = _stale()
    if stale:
        proc = subprocess.run(["make", "book"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            pytest.fail(f"`make book` failed (stale pages: {stale}):\n{(proc.stdout + proc.stderr)[-5000:]}")
        still = _stale()
        assert not still, f"`make book` did not produce these pages: {still}"
    return HTML


@pytest.fixture(scope="session")
def rendered(built_book: Path) -> dict[str, Rendered]:
    """Every toc page rendered once in Chromium (two at a time), keyed by toc entry."""
    if _chromium() is None:
        pytest.skip(
            "chromium is not installed: run `apt-get install -y chromium` "
            "(`make test` does this when run as root)"
        )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def render(entry: str) -> Rendered:
        page = _html_path(entry)
        shot = SCREENSHOTS / (entry.replace("/", "_") + ".png")
        shot.unlink(missing_ok=True)
        dom, console = run_chromium(page.as_uri(), shot)
        return Rendered(page.read_text(encoding="utf-8"), dom, console, shot)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(PAGES, pool.map(render, PAGES)))


def _source(entry: str) -> str:
    return _resolve(entry).read_text(encoding="utf-8")


def test_toc_has_pages():
    assert PAGES, "_toc.yml lists no page with a source file"


@pytest.mark.parametrize("entry", PAGES)
def test_page_loads_without_console_errors(rendered, entry):
    page = rendered[entry]
    assert "<h1" in page.dom and "</html>" in page.dom, f"{entry}: the page did not load"
    errors = [m for m in page.console if CONSOLE_ERROR.search(m) and not any(h in m for h in HARMLESS)]
    assert not errors, f"{entry}: console errors:\n" + "\n".join(errors)


@pytest.mark.parametrize("entry", PAGES)
def test_math_is_typeset(rendered, entry):
    page = rendered[entry]
    n_math = len(re.findall(r'class="math notranslate nohighlight"', page.static_html))
    n_rendered = page.dom.count("<mjx-container")
    assert n_rendered >= n_math, f"{entry}: {n_math} math elements, {n_rendered} typeset by MathJax"
    assert "<mjx-merror" not in page.dom, f"{entry}: MathJax could not parse some math"


@pytest.mark.parametrize("entry", PAGES)
def test_figures_are_shown(rendered, entry):
    page = rendered[entry]
    src = _source(entry)
    expected = src.count("{glue:figure}") + src.count("```{figure}")
    shown = 0
    for img in re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', page.dom):
        if img.startswith("data:image/"):
            shown += len(img) > 200
        elif img.startswith("blob:"):
            continue  # a frame of a live panel, not a figure of the source (tests/test_browser_controls.py)
        elif not img.startswith(("http:", "https:")):
            target = (_html_path(entry).parent / img.split("?")[0]).resolve()
            assert target.is_file() and target.stat().st_size > 0, f"{entry}: missing image {img}"
            shown += 1
    assert shown >= expected, f"{entry}: {expected} figures in the source, {shown} images with data in the page"


@pytest.mark.parametrize("entry", PAGES)
def test_widgets_are_rendered(rendered, entry):
    page = rendered[entry]
    has_widgets = "application/vnd.jupyter.widget-view+json" in page.static_html
    n_panels = _source(entry).count("live_or_frames(")
    if n_panels:
        assert has_widgets, f"{entry}: the source has a live_or_frames panel but the page saved no widget state"
    if has_widgets:  # each panel rendered, with its controls (tests/test_browser_controls.py moves them)
        assert page.dom.count("mvssl-live") >= n_panels, f"{entry}: saved widgets, but not every panel was rendered"
        assert "mvssl-control" in page.dom, f"{entry}: saved widgets, but no control was rendered"


@pytest.mark.parametrize("entry", PAGES)
def test_no_traceback_and_screenshot_saved(rendered, entry):
    page = rendered[entry]
    assert 'class="output traceback"' not in page.static_html, f"{entry}: a cell traceback is shown"
    assert "output traceback" not in page.dom, f"{entry}: a cell traceback is shown"
    assert page.screenshot.is_file() and page.screenshot.stat().st_size > 10_000, f"{entry}: no screenshot"


@pytest.mark.parametrize("entry", PAGES)
def test_no_markdown_table_left_as_text(rendered, entry):
    """A cell's Markdown table shown as plain text (the cell lacks ``markdown_format: gfm``) reads as a
    wall of pipes; code blocks are left out of the check."""
    text = re.sub(r"<pre\b.*?</pre>", "", rendered[entry].dom, flags=re.S)
    assert not re.search(r"\|\s*-{3,}\s*\|", text), f"{entry}: a Markdown table is shown as raw text"
