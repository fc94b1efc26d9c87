"""Rewrite a chapter's ``{glue:text}`` roles as ``{eval}`text("key", "fmt")``` (issue 14, item 2).

JupyterLab (jupyterlab-myst) leaves ``{glue:text}`key:fmt``` raw; it evaluates ``{eval}`` in the
kernel, as myst-nb does in its inline execution mode. :func:`mvssl_core.booktext.text` formats a glued
value exactly as ``{glue:text}`` does, so the book's numbers do not change. A conversion rewrites:

- every ``{glue:text}`key:fmt``` as ``{eval}`text("key", "fmt")``` and ``{glue:text}`key``` as
  ``{eval}`text("key")```;
- the chapter's ``from myst_nb import glue`` line as ``from mvssl_core.booktext import glue, text``;
- the front matter, adding ``mystnb: {execution_mode: inline, eval_name_regex: ...}``
  (:data:`mvssl_core.booktext.EVAL_NAME_REGEX`), without which myst-nb does not evaluate ``{eval}``.

A chapter with no ``{glue:text}`` role (already converted, or never glued) is left alone, so the
script can be rerun on ``book/*.md``.

What the script cannot fix: ``{glue:text}`` resolves after the whole chapter ran, but ``{eval}`` is
evaluated where it stands (myst-nb's inline mode, JupyterLab), so a key glued by a cell *below* the
prose that shows it fails there, as does a chapter variable named ``text`` that hides
:func:`~mvssl_core.booktext.text`. Move the gluing cell (or line) above the prose, rename the variable;
``tests/test_book.py`` (``eval_role_problems``) and ``tests/test_lab.py`` find both.

Usage::

    python scripts/glue_to_eval.py book/*.md           # report what would change
    python scripts/glue_to_eval.py book/*.md --write   # rewrite the files
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mvssl_core.booktext import EVAL_NAME_REGEX  # noqa: E402

ROLE = re.compile(r"\{glue:text\}`([^`]+)`")
KEY = re.compile(r"[A-Za-z0-9_]+")
OLD_IMPORT = "from myst_nb import glue\n"
NEW_IMPORT = "from mvssl_core.booktext import glue, text\n"


class ConvertError(ValueError):
    """A chapter the script cannot convert; the message names the role or line and what was expected."""


def _role(match: re.Match) -> str:
    """One ``{glue:text}`` role as its ``{eval}`` equivalent."""
    body = match.group(1)
    key, sep, fmt = body.rpartition(":") if ":" in body else (body, "", "")
    if not KEY.fullmatch(key):
        raise ConvertError(f"{match.group(0)}: key {key!r} must match {KEY.pattern} (EVAL_NAME_REGEX)")
    if '"' in fmt:
        raise ConvertError(f"{match.group(0)}: format {fmt!r} must not contain a double quote")
    return f'{{eval}}`text("{key}", "{fmt}")`' if sep else f'{{eval}}`text("{key}")`'


def _front_matter(src: str) -> tuple[str, str]:
    """``(front matter, rest)`` of a chapter: the YAML between the first two ``---`` lines, and what follows."""
    if not src.startswith("---\n"):
        raise ConvertError("the chapter must start with a '---' front-matter line")
    head, sep, rest = src[4:].partition("\n---\n")
    if not sep:
        raise ConvertError("the front matter has no closing '---' line")
    return head, rest


def convert(src: str) -> tuple[str, int]:
    """``(converted text, number of roles rewritten)`` for one chapter's text.

    Returns ``(src, 0)`` unchanged for a chapter with no ``{glue:text}`` role (already converted, or
    with no numbers in its prose). Raises :class:`ConvertError` for a role whose key or format ``{eval}`` cannot hold, a
    chapter without the ``from myst_nb import glue`` line, or front matter that already has ``mystnb:``.
    """
    out, n = ROLE.subn(_role, src)
    if n == 0:
        return src, 0
    if OLD_IMPORT not in out:
        raise ConvertError(f"no {OLD_IMPORT.strip()!r} line to replace with {NEW_IMPORT.strip()!r}")
    out = out.replace(OLD_IMPORT, NEW_IMPORT, 1)
    head, rest = _front_matter(out)
    if re.search(r"^mystnb:", head, re.M):
        raise ConvertError("the front matter already has a 'mystnb:' key; add the inline settings by hand")
    regex = EVAL_NAME_REGEX.replace("'", "''")  # YAML single-quoted string
    settings = f"mystnb:\n  execution_mode: inline\n  eval_name_regex: '{regex}'"
    return f"---\n{head}\n{settings}\n---\n{rest}", n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="+", type=Path, help="chapter markdown files (book/*.md)")
    parser.add_argument("--write", action="store_true", help="rewrite the files (default: only report)")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.chapters:
        try:
            src = path.read_text(encoding="utf-8")
            new, n = convert(src)
        except (OSError, ConvertError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        if new == src:
            print(f"{path}: already converted (or nothing to convert)")
            continue
        print(f"{path}: {n} roles{' rewritten' if args.write else ' to rewrite'}")
        if args.write:
            path.write_text(new, encoding="utf-8")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
