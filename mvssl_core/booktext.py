"""Numbers in a chapter's prose that render in both forms of the book: the HTML (myst-nb) and JupyterLab
(jupyterlab-myst).

``{glue:text}`key:fmt``` renders only in the book; in a notebook it stays raw. Both renderers evaluate
the inline role ``{eval}`expr``` in the chapter's kernel and show the result's text (a string without
its quotes). A chapter glues with :func:`glue` (``myst_nb.glue`` that also keeps the value's text) and
writes ``{eval}`text("key", "fmt")``` where it wrote ``{glue:text}`key:fmt```: :func:`text` formats the
glued text exactly as ``{glue:text}`` does, so the book's numbers do not change.

myst-nb evaluates ``{eval}`` only in its ``inline`` execution mode and only for expressions matching
``eval_name_regex``; a chapter sets both in its front matter (``mystnb:``), with :data:`EVAL_NAME_REGEX`.
"""

from __future__ import annotations

from typing import Any

# the only expressions a chapter's {eval} roles may hold: text("key") or text("key", "fmt")
EVAL_NAME_REGEX = r'^text\("[A-Za-z0-9_]+"(, "[^"]*")?\)$'

_TEXT: dict[str, str] = {}  # glue key -> the value's text/plain, as glue stores it


class _Plain(str):
    """A string whose repr is itself, so a kernel shows it (text/plain) without quotes."""

    def __repr__(self) -> str:
        return str(self)


def glue(name: str, value: Any, display: bool = True) -> None:
    """``myst_nb.glue(name, value, display)``, keeping the value's text for :func:`text`."""
    from IPython.core.formatters import format_display_data
    from myst_nb import glue as nb_glue

    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty glue key, got {name!r}")
    nb_glue(name, value, display=display)
    _TEXT[name] = format_display_data(value, include=["text/plain"])[0]["text/plain"]


def text(name: str, fmt: str = "s") -> str:
    """The glued value ``name`` as ``{glue:text}`name:fmt``` renders it (myst-nb's format_plain_text;
    ``{glue:text}`name``` uses fmt "s").

    Raises:
        KeyError naming ``name`` and the keys glued so far, when nothing was glued under it.
    """
    from myst_nb.core.variables import format_plain_text

    if name not in _TEXT:
        raise KeyError(f"text({name!r}): nothing glued under {name!r} yet; glued: {sorted(_TEXT)}")
    return _Plain(format_plain_text(_TEXT[name], fmt))
