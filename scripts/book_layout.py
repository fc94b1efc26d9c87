"""Measure the layout of the built HTML book in headless Chromium at a phone and a desktop width.

    python scripts/book_layout.py [HTML_DIR] [--widths 400,1280] [--json OUT.json]

HTML_DIR defaults to _build/html. Every page of _toc.yml is opened (a copy with a probe script, next
to the page, removed afterwards) at each viewport width, after MathJax and the widgets have rendered.
One row per page and width:

  doc       document width (documentElement.scrollWidth, CSS px); > width means the page scrolls sideways
  eq        display equations (MathJax containers)
  eq>       of them, wider than the space they are shown in
  eq_scr    of those, inside a scroll container (overflow-x auto/scroll) that can scroll to the rest
            and shows a cue that it can (a shadow/fade background; a desktop scrollbar does not count, as
            phones show overlay scrollbars only while scrolling)
  eq_cut    of those, clipped with no cue or no way to scroll (the defect)
  ieq_cut   inline equations clipped with no cue or no way to scroll
  tab tab> tab_scr tab_cut   the same for tables
  cols_hid  header cells of tables not visible on screen without scrolling (sum over the page)
  code      visible lines of code (cells and code blocks whose text is rendered, not folded)
  code_cut  of them, lines wider than their box (cut at the right until scrolled)
  spill     elements (innermost) that stick out of the viewport and make the page scroll sideways

Exit status 0; the numbers are for the reader (and tests/test_layout.py, which asserts on them).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (400, 1280)
CHROMIUM_TIMEOUT_S = 120
VIRTUAL_TIME_MS = 15_000
PROBE_OUT = re.compile(r'<pre id="mvssl-layout"[^>]*>(.*?)</pre>', re.S)
COLUMNS = ("doc", "eq", "eq>", "eq_scr", "eq_cut", "ieq_cut", "tab", "tab>", "tab_scr", "tab_cut", "cols_hid",
           "code", "code_cut", "spill")

# Runs in the page: waits for MathJax and the widgets, then measures (see the module docstring) and
# writes the result, as JSON, into <pre id="mvssl-layout">.
PROBE_HEAD = """<script>
// Headless Chromium under a virtual-time budget draws no frames; a timer stands in for the frame clock
// so that the widget manager renders (as in tests/test_browser_controls.py).
window.requestAnimationFrame = cb => setTimeout(() => cb(performance.now()), 16);
window.cancelAnimationFrame = id => clearTimeout(id);
</script>"""
PROBE_BODY = r"""<script>
(async function () {
  const out = {error: null};
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  try {
    for (let t = 0; t < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); t++) await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
    await sleep(3000);  // widgets, and the book's own layout script
    await document.fonts.ready;
    const W = document.documentElement.clientWidth;
    const visible = el => el.getClientRects().length > 0;
    const cs = el => getComputedStyle(el);
    const scrolls = el => /auto|scroll/.test(cs(el).overflowX);
    const clips = el => cs(el).overflowX !== "visible";
    // a cue that the box scrolls: a gradient background (scroll shadow / fade). A desktop scrollbar is not
    // counted: phones draw overlay scrollbars, shown only while scrolling.
    const cue = el => /gradient/.test(cs(el).backgroundImage);
    const classes = el => typeof el.className === "string" && el.className.trim()
      ? "." + el.className.trim().split(/\s+/).slice(0, 2).join(".") : "";
    const describe = el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + classes(el);
    // What becomes of content `el` with box `rect`: "fits" (on screen), "scroll" (reachable by scrolling
    // boxes that each show a cue), "scroll-nocue", or "cut" (clipped by a box that does not scroll, or
    // sticking out of the page). Each clipping ancestor either shows the content within its box or
    // scrolls to it (then the boxes around it must show that ancestor), and the content must be on screen.
    const RANK = {"fits": 0, "scroll": 1, "scroll-nocue": 2, "cut": 3};
    function fate(el, rect) {
      let state = "fits";
      for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
        if (!clips(a)) continue;
        const r = a.getBoundingClientRect();
        if (rect.left >= r.left - 1 && rect.right <= r.right + 1) continue;
        if (!(scrolls(a) && a.scrollWidth > a.clientWidth + 1 && r.left >= -1 && r.right <= W + 1)) return "cut";
        const f = cue(a) ? "scroll" : "scroll-nocue";
        if (RANK[f] > RANK[state]) state = f;
        rect = r;  // scrolled into view in `a`, the content needs from the boxes around `a` what `a` needs
      }
      return rect.left < -1 || rect.right > W + 1 ? "cut" : state;
    }
    function tally(items, content) {
      const t = {n: 0, over: 0, scroll: 0, nocue: 0, cut: 0, cut_ids: []};
      for (const el of items) {
        if (!visible(el)) continue;
        t.n++;
        const c = content(el), f = fate(c, c.getBoundingClientRect());
        if (f === "fits") continue;
        t.over++;
        if (f === "scroll") t.scroll++;
        else { f === "cut" ? t.cut++ : t.nocue++; t.cut_ids.push(describe(el) + ":" + f); }
      }
      return t;
    }
    const article = document.querySelector("article") || document.body;
    // display equations: the rendered math inside each MathJax display container
    const eqs = [...article.querySelectorAll('mjx-container[display="true"]')];
    out.eq = tally(eqs, el => el.querySelector("mjx-math") || el);
    const inline = [...article.querySelectorAll("mjx-container:not([display='true'])")];
    out.ieq = tally(inline, el => el.querySelector("mjx-math") || el);
    // inline math that is a scroll box, and inline math drawn wider than its span (by > 2 px): the first
    // should be the second (book/_static/mvssl-layout.js), not every span (a scrollbar under each)
    const spans = [...article.querySelectorAll("span.math")].filter(visible);
    out.ieq_scroll_boxes = spans.filter(scrolls).length;
    out.ieq_too_wide = spans.filter(sp => {
      const math = sp.querySelector("mjx-math");
      if (!math) return false;
      const box = sp.getBoundingClientRect(), drawn = math.getBoundingClientRect();
      return drawn.right > box.right + 2 || drawn.left < box.left - 2;
    }).length;
    const tables = [...article.querySelectorAll("table")].filter(t => !t.closest("mjx-container, .highlight"));
    out.tab = tally(tables, el => el);
    // header cells not on screen (outside the viewport or a clipping ancestor) without scrolling
    out.cols_hidden = 0; out.cols = [];
    for (const t of tables) {
      if (!visible(t)) continue;
      const heads = [...t.querySelectorAll("thead tr:last-child th, thead tr:last-child td")];
      let hidden = 0;
      for (const h of heads) if (fate(h, h.getBoundingClientRect()) !== "fits") hidden++;
      out.cols_hidden += hidden; out.cols.push([heads.length - hidden, heads.length]);
    }
    // code: rendered lines of <pre> in code cells and code blocks; a line is cut when wider than the box
    out.code = 0; out.code_cut = 0;
    for (const pre of article.querySelectorAll("div.highlight pre")) {
      if (!visible(pre)) continue;
      const lines = pre.textContent.replace(/\n$/, "").split("\n");
      out.code += lines.length;
      if (pre.scrollWidth <= pre.clientWidth + 1) continue;
      const longest = Math.max(...lines.map(l => l.length));
      const style = cs(pre), pad = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
      const charW = (pre.scrollWidth - pad) / Math.max(longest, 1);
      out.code_cut += lines.filter(l => l.length * charW > pre.clientWidth - pad + 1).length;
    }
    // elements sticking out of the viewport (by their box, or by their own text overflowing it) with no
    // clipping ancestor: they widen the page. The innermost are listed, which name the culprit.
    const sticks = el => {
      if (!visible(el) || ["fixed", "sticky"].includes(cs(el).position)) return false;
      const r = el.getBoundingClientRect();
      return r.right > W + 1 || (cs(el).overflowX === "visible" && r.left + el.scrollWidth > W + 1);
    };
    out.spill = [];
    for (const el of document.body.querySelectorAll("*")) {
      if (!sticks(el) || [...el.children].some(sticks)) continue;
      let clipped = false;
      for (let a = el.parentElement; a && a !== document.body && !clipped; a = a.parentElement) clipped = clips(a);
      const r = el.getBoundingClientRect();
      if (!clipped) out.spill.push(describe(el) + "@" + Math.round(Math.max(r.right, r.left + el.scrollWidth))
        + " " + JSON.stringify(el.textContent.trim().slice(0, 60)));
    }
    out.doc = document.documentElement.scrollWidth;
    out.viewport = W;
  } catch (e) { out.error = String(e && e.stack || e); }
  parent.postMessage({mvsslLayout: JSON.stringify(out)}, "*");
})();
</script>"""


def toc_pages(root: Path = ROOT) -> list[str]:
    """The entries of _toc.yml (`root:` and every `file:`), in order, without suffix."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    found.append(node[key])
            for value in node.values():
                if isinstance(value, (dict, list)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8")))
    return [str(Path(e).with_suffix("")) for e in found]


def chromium() -> str | None:
    """Debian's chromium, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Chromium's window is at least 500 px wide, so a page is shown in an iframe `width` px wide (its own
# viewport: media queries and layout see `width`); the probe in the page posts its result to the frame
# page, which writes it into its DOM. Scrollbars are hidden (overlay, as on a phone).
FRAME = """<!DOCTYPE html><html><head><meta charset="utf-8"><style>body{margin:0}iframe{border:0}</style></head>
<body><iframe src="%(src)s" width="%(width)d" height="1600"></iframe><script>
window.addEventListener("message", e => {
  if (!e.data || !e.data.mvsslLayout) return;
  const pre = document.createElement("pre"); pre.id = "mvssl-layout"; pre.textContent = e.data.mvsslLayout;
  document.body.appendChild(pre);
});
</script></body></html>"""


def _run(url: str, width: int) -> str:
    """The DOM of the frame page `url` after its scripts ran, in headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="mvssl-layout-") as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={max(width, 500) + 20},1700",
               f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom", url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited with {proc.returncode} on {url}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def measure_page(html_dir: Path, entry: str, width: int) -> dict:
    """The probe's measurements (see the module docstring) of one built page at one viewport width.

    Raises FileNotFoundError when the page is not built, RuntimeError when the probe gives no result."""
    page = html_dir / f"{entry}.html"
    if not page.is_file():
        raise FileNotFoundError(f"{page}: page not built (run `make book`)")
    text = page.read_text(encoding="utf-8")
    copy = page.with_name(f"_layout{width}_{page.name}")
    frame = page.with_name(f"_layout{width}_frame_{page.name}")
    copy.write_text(text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_BODY + "</body>", 1),
                    encoding="utf-8")
    frame.write_text(FRAME % {"src": copy.name, "width": width}, encoding="utf-8")
    try:
        dom = _run(frame.as_uri(), width)
    finally:
        copy.unlink(missing_ok=True)
        frame.unlink(missing_ok=True)
    found = PROBE_OUT.search(dom)
    if not found:
        raise RuntimeError(f"{entry} at {width} px: the layout probe wrote no result")
    result = json.loads(html.unescape(found.group(1)))
    if result.get("error"):
        raise RuntimeError(f"{entry} at {width} px: the layout probe failed: {result['error']}")
    return result | {"page": entry, "width": width}


def measure(html_dir: Path, pages: list[str], widths: tuple[int, ...] = WIDTHS, jobs: int = 2) -> list[dict]:
    """measure_page for every page and width, `jobs` Chromiums at a time, in (page, width) order."""
    todo = [(p, w) for p in pages for w in widths]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda pw: measure_page(html_dir, *pw), todo))


def row(m: dict) -> list:
    """The table row of one measurement, in COLUMNS order."""
    eq, ieq, tab = m["eq"], m["ieq"], m["tab"]
    return [m["doc"], eq["n"], eq["over"], eq["scroll"], eq["cut"] + eq["nocue"], ieq["cut"] + ieq["nocue"],
            tab["n"], tab["over"], tab["scroll"], tab["cut"] + tab["nocue"], m["cols_hidden"], m["code"],
            m["code_cut"], len(m["spill"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html_dir", nargs="?", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="viewport widths, comma-separated")
    parser.add_argument("--json", type=Path, help="also write every measurement (with details) here")
    parser.add_argument("--pages", help="comma-separated toc entries (default: all of _toc.yml)")
    args = parser.parse_args(argv)
    if chromium() is None:
        print("error: chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    if not args.html_dir.is_dir():
        print(f"error: {args.html_dir}: no built book there (run `make book`)", file=sys.stderr)
        return 2
    widths = tuple(int(w) for w in args.widths.split(","))
    pages = args.pages.split(",") if args.pages else toc_pages()
    results = measure(args.html_dir, pages, widths)
    print(f"{'page':<18} {'width':>5} " + " ".join(f"{c:>8}" for c in COLUMNS))
    for m in results:
        print(f"{m['page'].split('/')[-1]:<18} {m['width']:>5} " + " ".join(f"{v:>8}" for v in row(m)))
    for w in widths:
        rows = [row(m) for m in results if m["width"] == w]
        sums = [max(r[0] for r in rows)] + [sum(r[i] for r in rows) for i in range(1, len(COLUMNS))]
        print(f"{'ALL (max doc)':<18} {w:>5} " + " ".join(f"{v:>8}" for v in sums))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
