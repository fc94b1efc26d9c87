"""The built HTML book on a phone (400 px) and on a desktop (1280 px), measured in headless Chromium.

scripts/book_layout.py opens every page of _toc.yml at both widths (in an iframe of that width, since
Chromium's window is at least 500 px wide) once MathJax and the widgets have rendered, and measures
it. Asserted here (issue 14, item 4):
- at 400 px no page is wider than the viewport (nothing scrolls sideways);
- at both widths every display equation, inline equation and table too wide for its column sits in a
  scroll container that can scroll to the rest and shows a cue that it does (the shadows of
  book/_static/mvssl-layout.css; mvssl-layout.js marks the inline math that is too wide): nothing is
  clipped out of reach or without a cue;
- at 1280 px the reproduce page's provenance table shows all its columns.
The probe itself is checked on a small page made here, with each defect present once.

Needs the built book (tests/test_browser.py's fixture builds it with `make book` when missing or stale;
MVSSL_BOOK_HTML=<folder> measures that folder as it is instead) and Debian's `chromium`; without
chromium these tests are skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from test_browser import PAGES, _chromium, built_book  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("book_layout", ROOT / "scripts" / "book_layout.py")
book_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book_layout)

PHONE, DESKTOP = 400, 1280
ENTRIES = [str(Path(e).with_suffix("")) for e in PAGES]

needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="chromium is not installed: run `apt-get install -y chromium` (`make test` does this when run as root)")


@pytest.fixture(scope="module")
def html_dir(request) -> Path:
    """The built book: MVSSL_BOOK_HTML when set, else _build/html (built when missing or stale)."""
    if _chromium() is None:
        pytest.skip("chromium is not installed: run `apt-get install -y chromium` (`make test` does this as root)")
    folder = os.environ.get("MVSSL_BOOK_HTML")
    if folder:
        if not Path(folder).is_dir():
            pytest.fail(f"MVSSL_BOOK_HTML={folder}: no such folder")
        return Path(folder)
    return request.getfixturevalue("built_book")


@pytest.fixture(scope="module")
def layout(html_dir: Path) -> dict[tuple[str, int], dict]:
    """Every toc page measured at 400 and 1280 px, keyed by (entry, width)."""
    results = book_layout.measure(html_dir, ENTRIES, (PHONE, DESKTOP))
    return {(m["page"], m["width"]): m for m in results}


def _defects(tally: dict) -> list[str]:
    return tally["cut_ids"] if tally["cut"] + tally["nocue"] else []


@pytest.mark.parametrize("entry", ENTRIES)
def test_no_page_scrolls_sideways_on_a_phone(layout, entry):
    m = layout[(entry, PHONE)]
    assert m["viewport"] == PHONE, f"{entry}: measured in a {m['viewport']} px viewport, not {PHONE}"
    assert m["doc"] <= PHONE, f"{entry}: {m['doc']} px wide at {PHONE} px; sticking out: {m['spill']}"


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
@pytest.mark.parametrize("entry", ENTRIES)
def test_wide_equations_and_tables_scroll_with_a_cue(layout, entry, width):
    m = layout[(entry, width)]
    assert not _defects(m["eq"]), (
        f"{entry} at {width} px: {m['eq']['cut'] + m['eq']['nocue']} of {m['eq']['over']} wide display equations "
        f"clipped or scrolling with no cue: {m['eq']['cut_ids']}")
    assert not _defects(m["ieq"]), (
        f"{entry} at {width} px: {m['ieq']['cut'] + m['ieq']['nocue']} inline equations wider than their line "
        f"clipped or scrolling with no cue: {m['ieq']['cut_ids']}")
    assert not _defects(m["tab"]), (
        f"{entry} at {width} px: {m['tab']['cut'] + m['tab']['nocue']} of {m['tab']['over']} wide tables "
        f"clipped or scrolling with no cue: {m['tab']['cut_ids']}")


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
@pytest.mark.parametrize("entry", ENTRIES)
def test_only_inline_math_too_wide_for_its_line_scrolls(layout, entry, width):
    """Most inline math pokes out of its span by a pixel or so (and MathJax's hidden assistive MathML
    is wider still): making all of it scroll would put a scrollbar under each on a desktop."""
    m = layout[(entry, width)]
    assert m["ieq_scroll_boxes"] == m["ieq_too_wide"], (
        f"{entry} at {width} px: {m['ieq_scroll_boxes']} inline equations scroll, "
        f"{m['ieq_too_wide']} are wider than their line")


def test_reproduce_table_shows_every_column_at_1280(layout):
    m = layout[("book/reproduce", DESKTOP)]
    assert m["cols"], "book/reproduce: no table measured"
    for shown, total in m["cols"]:
        assert shown == total, f"book/reproduce at {DESKTOP} px: {shown} of {total} columns on screen"
    assert m["tab"]["over"] == 0, f"book/reproduce at {DESKTOP} px: a table is wider than its column"


# A page with each defect once: a page-widening word, an equation clipped by an overflow:hidden box, an
# equation in a scroll box with no cue, a table in a scroll box with a cue, and a table that fits.
PROBE_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>
body { margin: 0 } mjx-container, mjx-math { display: block } mjx-math { width: 600px; height: 20px }
.cue { background: linear-gradient(to right, white, transparent) }
</style></head><body><article>
<p>%(long_word)s</p>
<div style="overflow: hidden"><mjx-container display="true"><mjx-math></mjx-math></mjx-container></div>
<div><mjx-container display="true" style="overflow-x: auto"><mjx-math></mjx-math></mjx-container></div>
<div class="cue" style="overflow-x: auto">
<table style="width: 700px"><thead><tr><th>a</th><th>b</th></tr></thead></table></div>
<table><thead><tr><th>x</th><th>y</th><th>z</th></tr></thead></table>
</article></body></html>"""


@needs_chromium
def test_probe_counts_each_defect(tmp_path):
    (tmp_path / "page.html").write_text(PROBE_PAGE % {"long_word": "w" * 120}, encoding="utf-8")
    m = book_layout.measure_page(tmp_path, "page", PHONE)
    assert m["viewport"] == PHONE
    assert m["doc"] > PHONE and len(m["spill"]) == 1 and m["spill"][0].startswith("p@")
    assert (m["eq"]["n"], m["eq"]["over"], m["eq"]["scroll"], m["eq"]["nocue"], m["eq"]["cut"]) == (2, 2, 0, 1, 1)
    assert (m["tab"]["n"], m["tab"]["over"], m["tab"]["scroll"], m["tab"]["nocue"], m["tab"]["cut"]) == (2, 1, 1, 0, 0)
    assert m["cols"] == [[1, 2], [3, 3]], m["cols"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"], "the probe's copies were left behind"

    (tmp_path / "page.html").write_text(PROBE_PAGE % {"long_word": "short words only"}, encoding="utf-8")
    m = book_layout.measure_page(tmp_path, "page", DESKTOP)
    assert (m["viewport"], m["doc"], m["spill"]) == (DESKTOP, DESKTOP, [])
    assert (m["eq"]["over"], m["tab"]["over"], m["cols"]) == (0, 0, [[2, 2], [3, 3]])


def test_measure_page_names_a_missing_page(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.html: page not built"):
        book_layout.measure_page(tmp_path, "nope", PHONE)
