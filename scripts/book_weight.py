"""Print the weight of each page of the built HTML book.

    python scripts/book_weight.py [_build/html]

One row per page: the HTML file, the images it shows (<img> files and inline data: images), the saved
widget state inside the HTML (and, of it, the PNG frames of the offline controls: count and decoded
bytes), the widget JavaScript it loads (require.js + embed-amd.js, the same files on every widget page,
cached by the browser after the first) and the total a first visit transfers (HTML + images + every
local script, stylesheet and font file the page names, not the pages it links to; fonts loaded from
stylesheets are not counted).
Sizes in kB (1000 bytes). Budget of this book: at most 1500 kB of frames per page (FRAMES_BUDGET_KB);
pages over it are flagged with "!" and the script exits with status 1.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMES_BUDGET_KB = 1500
WIDGET_STATE = re.compile(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', re.S)
IMG = re.compile(r'<img\b[^>]*\bsrc="([^"]+)"')
ASSET = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"')
WIDGET_JS = ("widgets/require.js", "widgets/embed-amd.js")


def _local(page: Path, url: str) -> Path | None:
    if url.startswith(("http:", "https:", "data:", "#", "mailto:")):
        return None
    path = (page.parent / url.split("?")[0].split("#")[0]).resolve()
    return path if path.is_file() else None


def frames_of(state: dict) -> tuple[int, int]:
    """(count, decoded bytes) of the Image models in a saved widget state."""
    count = size = 0
    for model in state.get("state", {}).values():
        if model.get("model_name") != "ImageModel":
            continue
        count += 1
        for buffer in model.get("buffers", []):
            size += len(base64.b64decode(buffer["data"])) if buffer.get("encoding") == "base64" else len(buffer["data"])
    return count, size


def page_weight(page: Path) -> dict:
    """The sizes (bytes) of one built page; see the module docstring."""
    html = page.read_text(encoding="utf-8")
    images = 0
    for src in IMG.findall(html):
        if src.startswith("data:"):
            images += len(src)
        elif (path := _local(page, src)) is not None:
            images += path.stat().st_size
    state_text = "".join(WIDGET_STATE.findall(html))
    n_frames, frame_bytes = 0, 0
    for text in WIDGET_STATE.findall(html):
        n, b = frames_of(json.loads(text))
        n_frames, frame_bytes = n_frames + n, frame_bytes + b
    assets = {p for p in (_local(page, u) for u in ASSET.findall(html)) if p is not None and p.suffix != ".html"}
    widget_js = sum(p.stat().st_size for p in assets if p.as_posix().endswith(WIDGET_JS))
    total = len(html.encode()) + images + sum(p.stat().st_size for p in assets)
    return {"html": len(html.encode()), "images": images, "state": len(state_text.encode()),
            "frames": n_frames, "frame_bytes": frame_bytes, "widget_js": widget_js, "total": total}


def main(argv: list[str]) -> int:
    html_dir = Path(argv[0]) if argv else ROOT / "_build" / "html"
    if not html_dir.is_dir():
        print(f"error: {html_dir} is not a folder; build the book with `make book` first", file=sys.stderr)
        return 2
    pages = sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.parts and p.name not in
                   ("genindex.html", "search.html"))
    kb = lambda n: f"{n / 1000:.0f}"  # noqa: E731
    print(f"{'page':28} {'HTML':>7} {'images':>7} {'state':>7} {'frames':>6} {'frame kB':>8} "
          f"{'widget JS':>9} {'total':>7}   (kB)")
    over = []
    for page in pages:
        w = page_weight(page)
        flag = "!" if w["frame_bytes"] > FRAMES_BUDGET_KB * 1000 else ""
        if flag:
            over.append(page)
        name = page.relative_to(html_dir).as_posix()
        print(f"{name:28} {kb(w['html']):>7} {kb(w['images']):>7} {kb(w['state']):>7} {w['frames']:>6} "
              f"{kb(w['frame_bytes']):>8}{flag:1} {kb(w['widget_js']):>9} {kb(w['total']):>7}")
    verdict = f"over it: {[p.name for p in over]}" if over else "all pages within it"
    print(f"frames budget: {FRAMES_BUDGET_KB} kB per page; {verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
