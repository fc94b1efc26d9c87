"""The controls of the built HTML book, moved in headless Chromium with no kernel and no network.

For every page with saved widgets, a copy of the page with a probe script is opened in Chromium
(tests/test_browser.py's machinery). The probe waits for the widget manager to render the panels of
`mvssl_core.widgets.live_or_frames`, then moves every control through every combination of values,
with the keyboard on sliders (noUiSlider handles) and a change event on dropdowns, as a reader would,
and records a hash of the image shown after each move. The test then checks, against the widget
state saved in the page: each combination shows exactly the frame the build drew for those values,
each value shows a different frame, and the default frame is byte-for-byte the static figure the
page shows for the same call. It also checks that no control outside such a panel is left in the
page (a control that cannot move its figure must not appear), that no resource or font failed to
load, and that the console has no error beyond the known harmless ones.

Needs the built book (tests/test_browser.py's fixture builds it with `make book` when missing or stale) and
Debian's `chromium`; without chromium these tests are skipped, saying so.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from test_browser import (CONSOLE_ERROR, HARMLESS, PAGES, SCREENSHOTS, _chromium, _html_path,  # noqa: F401
                          built_book, run_chromium)

from mvssl_core.widgets import CONTROL_CLASS, FRAME_CLASS, PANEL_CLASS

WIDGET_STATE = re.compile(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', re.S)
WIDGET_VIEW = re.compile(r'<script type="application/vnd.jupyter.widget-view\+json">(.*?)</script>', re.S)
PROBE_OUT = re.compile(r'<pre id="mvssl-probe"[^>]*>(.*?)</pre>', re.S)
CONTROL_MODELS = ("SelectionSliderModel", "DropdownModel")
# Pages whose panels' default frame must equal a static figure of the page (the same call, glued).
STATIC_TWIN = {"book/intro": 1, "book/bounds": 1, "book/ceiling": 2, "book/er_objective": 2, "book/tightness": 1}
PROBE_VIRTUAL_MS = 120_000

# Runs in the page: records failed loads from the start, then moves the controls once the widgets
# have rendered and writes what it saw, as JSON, into <pre id="mvssl-probe">.
PROBE_HEAD = """<script>
// Headless Chromium under a virtual-time budget draws no frames, so requestAnimationFrame never fires and
// the widget manager's (Lumino's) posted messages pile up, then reach views removed meanwhile. A 60 Hz
// timer stands in for the frame clock of a real browser.
window.requestAnimationFrame = cb => setTimeout(() => cb(performance.now()), 16);
window.cancelAnimationFrame = id => clearTimeout(id);
window.__mvsslFailed = [];
window.__mvsslErrors = [];
const __mvsslConsoleError = console.error;
console.error = function (...args) { window.__mvsslErrors.push(args.map(String).join(" ")); return __mvsslConsoleError.apply(this, args); };
window.addEventListener("error", e => {
  const t = e.target;
  if (t && t !== window && (t.src || t.href)) window.__mvsslFailed.push(t.src || t.href);
}, true);
</script>"""
PROBE_BODY = r"""<script>
(async function () {
  const EXPECTED = %(n_panels)d, COMBOS = %(combos)s;
  const out = {panels: [], failed: [], fonts_failed: [], stray_controls: 0, error: null};
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const visible = el => el.getClientRects().length > 0;
  // what a control reads: a slider's readout, a dropdown's selected option
  const reads = c => c.querySelector("select") ? c.querySelector("select").selectedOptions[0].textContent : c.innerText.trim();
  function fnv(bytes) {  // FNV-1a, 32 bit, as tests/test_browser_controls.py:fnv
    let h = 0x811c9dc5;
    for (const b of bytes) { h ^= b; h = Math.imul(h, 0x01000193) >>> 0; }
    return h.toString(16) + ":" + bytes.length;
  }
  async function shown(panel) {
    const imgs = [...panel.querySelectorAll("img.%(frame)s")].filter(visible);
    if (imgs.length !== 1) return "visible images: " + imgs.length;
    const buf = await (await fetch(imgs[0].src)).arrayBuffer();
    return fnv(new Uint8Array(buf));
  }
  // Waits for the frame to change, then 100 ms more (a reader's pace, several animation frames).
  async function settle(panel, before) {
    let now = before;
    for (let t = 0; t < 40 && now === before; t++) { await sleep(50); now = await shown(panel); }
    await sleep(100);
    return now;
  }
  try {
    for (let t = 0; EXPECTED > 0 && t < 400 && document.querySelectorAll(".%(panel)s img.%(frame)s").length === 0; t++) await sleep(50);
    await sleep(500);
    const panels = [...document.querySelectorAll(".%(panel)s")];
    out.stray_controls = [...document.querySelectorAll(".widget-slider, .widget-dropdown, .widget-select-multiple")]
      .filter(el => !el.closest(".%(panel)s")).length;
    for (const [p, panel] of panels.entries()) {
      const controls = [...panel.querySelectorAll(".%(control)s")];
      const kinds = controls.map(c => c.querySelector("select") ? "dropdown" : (c.querySelector(".noUi-handle") ? "slider" : "?"));
      const rec = {kinds, default: await shown(panel), labels: controls.map(reads), moves: []};
      const current = (COMBOS[p] || {start: []}).start.slice();
      for (const target of (COMBOS[p] || {order: []}).order) {
        for (const [i, c] of controls.entries()) {
          if (current[i] === target[i]) continue;
          // one change at a time, each followed by the frame it selects, as a reader moves them
          if (kinds[i] === "dropdown") {
            const sel = c.querySelector("select");
            sel.selectedIndex = target[i];
            sel.dispatchEvent(new Event("change", {bubbles: true}));
            await settle(panel, await shown(panel));
          } else {
            const handle = c.querySelector(".noUi-handle");
            const key = target[i] > current[i] ? "ArrowRight" : "ArrowLeft";
            for (let n = 0; n < Math.abs(target[i] - current[i]); n++) {
              const before = await shown(panel);
              handle.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true, cancelable: true}));
              await settle(panel, before);
            }
          }
          current[i] = target[i];
        }
        await sleep(100);
        rec.moves.push([target.slice(), await shown(panel), controls.map(reads),
                        window.__mvsslErrors.splice(0)]);
      }
      out.panels.push(rec);
    }
    if (panels.length) panels[0].scrollIntoView();  // the screenshot shows the first panel
    await document.fonts.ready;
    const fontFiles = performance.getEntriesByType("resource").map(e => e.name).filter(n => /\.(woff2?|ttf|eot)\b/.test(n));
    document.fonts.forEach(f => { if (f.status === "error") out.fonts_failed.push(f.family + " (requested: " + fontFiles.join(", ") + ")"); });
  } catch (e) { out.error = String(e && e.stack || e); }
  out.failed = window.__mvsslFailed;
  const pre = document.createElement("pre"); pre.id = "mvssl-probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def fnv(data: bytes) -> str:
    """FNV-1a (32 bit) and length, as the probe computes them in the page."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return f"{h:x}:{len(data)}"


@dataclass
class Panel:
    """One live_or_frames panel as saved in the page: its controls and the frame of each combination."""

    labels: list[list[str]]  # per control, its option labels
    default: tuple[int, ...]
    frames: dict[tuple[int, ...], bytes] = field(default_factory=dict)


def _panels(static_html: str) -> list[Panel]:
    """The panels of a page, in page order, from its saved widget state."""
    (state_text,) = WIDGET_STATE.findall(static_html) or [None]
    if state_text is None:
        return []
    models = json.loads(state_text)["state"]
    ref = lambda s: s.removeprefix("IPY_MODEL_")  # noqa: E731

    def image_bytes(model) -> bytes:
        (buf,) = [b for b in model.get("buffers", []) if b["path"] == ["value"]]
        return base64.b64decode(buf["data"])

    panels = []
    for view in WIDGET_VIEW.findall(static_html):
        model = models[json.loads(view)["model_id"]]
        if PANEL_CLASS not in model["state"].get("_dom_classes", []):
            continue
        children = [models[ref(c)] for c in model["state"]["children"]]
        controls = [c for c in children if CONTROL_CLASS in c["state"].get("_dom_classes", [])]
        assert all(c["model_name"] in CONTROL_MODELS for c in controls), [c["model_name"] for c in controls]
        (root,) = [c for c in children if c["model_name"] == "StackModel"]
        panel = Panel([c["state"]["_options_labels"] for c in controls], tuple(c["state"]["index"] for c in controls))

        def walk(node, prefix):
            if node["model_name"] == "ImageModel":
                assert FRAME_CLASS in node["state"]["_dom_classes"]
                panel.frames[prefix] = image_bytes(node)
                return
            assert node["state"]["selected_index"] == panel.default[len(prefix)], "a stack starts off its control"
            for i, child in enumerate(node["state"]["children"]):
                walk(models[ref(child)], prefix + (i,))

        walk(root, ())
        panels.append(panel)
    return panels


def _order(panel: Panel) -> list[list[int]]:
    """Every combination of control indices, then back to the default."""
    combos = [list(c) for c in itertools.product(*(range(len(l)) for l in panel.labels))]
    return combos + [list(panel.default)]


@dataclass
class Probed:
    panels: list[Panel]
    result: dict
    console: list[str]
    static_images: dict[str, bytes]


def _probe(entry: str) -> Probed:
    """Open a copy of the page with the probe in Chromium; the copy is removed afterwards."""
    page = _html_path(entry)
    static_html = page.read_text(encoding="utf-8")
    panels = _panels(static_html)
    combos = [{"start": list(p.default), "order": _order(p)} for p in panels]
    probe = PROBE_BODY % {"n_panels": len(panels), "combos": json.dumps(combos), "frame": FRAME_CLASS,
                          "panel": PANEL_CLASS, "control": CONTROL_CLASS}
    copy = page.with_name(f"_probe_{page.name}")
    copy.write_text(static_html.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", probe + "</body>", 1),
                    encoding="utf-8")
    try:
        dom, console = run_chromium(copy.as_uri(), SCREENSHOTS / f"controls_{entry.replace('/', '_')}.png",
                                    virtual_time_ms=PROBE_VIRTUAL_MS)
    finally:
        copy.unlink(missing_ok=True)
    found = PROBE_OUT.search(dom)
    assert found, f"{entry}: the probe wrote no result (the page's scripts did not finish)"
    images = {}
    for src in re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', static_html):
        path = page.parent / src.split("?")[0]
        if not src.startswith(("data:", "http")) and path.is_file():
            images[src] = path.read_bytes()
    return Probed(panels, json.loads(html.unescape(found.group(1))), console, images)


@pytest.fixture(scope="module")
def probed(built_book) -> dict[str, Probed]:
    """Every toc page probed once in Chromium (two at a time), keyed by toc entry."""
    if _chromium() is None:
        pytest.skip("chromium is not installed: run `apt-get install -y chromium` (`make test` does this as root)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(PAGES, pool.map(_probe, PAGES)))


def test_book_has_live_panels(probed):
    assert sum(len(p.panels) for p in probed.values()) >= sum(STATIC_TWIN.values()), "too few live panels"


@pytest.mark.parametrize("entry", PAGES)
def test_every_control_moves_its_figure(probed, entry):
    page = probed[entry]
    result = page.result
    assert result["error"] is None, f"{entry}: the probe failed: {result['error']}"
    if "widget-view+json" in _html_path(entry).read_text(encoding="utf-8"):
        assert page.panels, f"{entry}: saved widgets but no live_or_frames panel"
    assert len(result["panels"]) == len(page.panels), (
        f"{entry}: {len(page.panels)} panels saved, {len(result['panels'])} rendered")
    for p, (panel, seen) in enumerate(zip(page.panels, result["panels"])):
        where = f"{entry}, panel {p + 1}"
        kinds = seen["kinds"]
        assert "?" not in kinds and len(kinds) == len(panel.labels), f"{where}: controls {kinds}"
        expected = {combo: fnv(png) for combo, png in panel.frames.items()}
        assert seen["default"] == expected[panel.default], f"{where}: the default frame is not the saved default"
        moves = seen["moves"]
        assert len(moves) == len(_order(panel)), f"{where}: {len(moves)} moves made of {len(_order(panel))}"
        for combo, shown, readouts, logged in moves:
            values = [labels[i] for labels, i in zip(panel.labels, combo)]
            errors = [m for m in logged if not any(h in m for h in HARMLESS)]
            assert not errors, f"{where}: moving to {values} logged {errors}"
            want = expected[tuple(combo)]
            assert shown == want, f"{where}: at {values} the page shows {shown}, expected the frame {want}"
            for readout, value in zip(readouts, values):
                readout = readout.replace("\xa0", " ")  # ipywidgets shows option labels with no-break spaces
                assert value in readout, f"{where}: the control reads {readout!r}, expected {value!r}"
        # each value of each control shows its own figure
        assert len(set(expected.values())) == len(expected), f"{where}: two grid points share a frame"


@pytest.mark.parametrize("entry", PAGES)
def test_default_frame_is_the_static_figure(probed, entry):
    page = probed[entry]
    statics = page.static_images.values()
    twins = [any(panel.frames[panel.default] == img for img in statics) for panel in page.panels]
    assert sum(twins) >= STATIC_TWIN.get(entry, 0), (
        f"{entry}: {sum(twins)} panels open on a figure identical to a static figure of the page, "
        f"expected {STATIC_TWIN.get(entry, 0)}"
    )


@pytest.mark.parametrize("entry", PAGES)
def test_no_dead_control_no_failed_request_no_console_error(probed, entry):
    page = probed[entry]
    assert page.result["stray_controls"] == 0, f"{entry}: {page.result['stray_controls']} controls outside a live panel"
    assert not page.result["failed"], f"{entry}: failed to load: {page.result['failed']}"
    assert not page.result["fonts_failed"], f"{entry}: fonts failed to load: {page.result['fonts_failed']}"
    errors = [m for m in page.console if CONSOLE_ERROR.search(m) and not any(h in m for h in HARMLESS)]
    assert not errors, f"{entry}: console errors:\n" + "\n".join(errors)
