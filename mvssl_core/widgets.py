"""Controls that work in both forms of the book: live in Jupyter, precomputed in the offline HTML.

A chapter calls :func:`live_or_frames` once with the function that draws its figure and a grid of
values per argument. In Jupyter (a live kernel) it returns an ``interactive`` widget that calls the
function on every change, with the live controls the chapter asks for (a ``FloatSlider`` may reach
values off the grid). When the book is built (``make book`` sets ``MVSSL_BOOK_BUILD=1`` in the
environment of the build, which the executing kernel inherits) it instead draws the figure once
for every point of the grid, at build time, and returns plain ipywidgets that need no kernel: one
control per argument and nested ``Stack`` widgets of ``Image`` frames, the selected frame tied to
the controls by ``jslink`` in the browser. myst-nb saves that widget state in the page.

The frames are the PNG bytes that IPython would display for the figure (the inline backend's
formatter), so the frame for the default values is byte-for-byte the static figure a chapter glues
from the same call.

A chapter's numbered figures go through :func:`show_and_glue`: glued for the book's
``{glue:figure}``, and also displayed in a live kernel, where that directive does not render.
"""

from __future__ import annotations

import base64
import itertools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

BOOK_ENV = "MVSSL_BOOK_BUILD"  # "1" while `make book` executes the chapters
MAX_FRAMES = 40  # frames per panel; the page budget (1.5 MB of frames, scripts/book_weight.py) binds first

# DOM classes that tests/test_browser.py looks for.
PANEL_CLASS = "mvssl-live"
CONTROL_CLASS = "mvssl-control"
FRAME_CLASS = "mvssl-frame"


def building_book() -> bool:
    """True while the book is being built (``MVSSL_BOOK_BUILD=1``), False in a live session."""
    value = os.environ.get(BOOK_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"environment variable {BOOK_ENV} must be '0', '1' or unset, got {value!r}")
    return value == "1"


def figure_png(fig: Any) -> bytes:
    """The PNG bytes IPython displays for a matplotlib figure (inline backend settings when a
    kernel is running, ``bbox_inches="tight"`` otherwise, as the inline backend does)."""
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython comes with the book extra
        shell = None
    if shell is not None:
        data = shell.display_formatter.formatters["image/png"](fig)
        if data is not None:
            return base64.b64decode(data) if isinstance(data, str) else bytes(data)
    from IPython.core.pylabtools import print_figure

    return print_figure(fig, "png", bbox_inches="tight")


def show_and_glue(name: str, fig: Any) -> None:
    """Glue ``fig`` under ``name`` for the book's ``{glue:figure}``, show it in a live notebook, close it.

    In the book build (:func:`building_book`) the figure is only glued (``display=False``): the
    ``{glue:figure}`` directive places it, so it appears once. In a live kernel (JupyterLab) it is
    also displayed as the cell's output, the same PNG the book shows, since the directive does not
    render there. Either way the figure is then closed, so the inline backend does not show it again.

    Args:
        name: the glue key, as in the chapter's ``{glue:figure} name`` directive.
        fig: a matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from myst_nb import glue

    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty glue key, got {name!r}")
    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    glue(name, fig, display=False)
    if not building_book():
        from IPython.display import display

        display(fig)
    plt.close(fig)


def _figure_of(result: Any, fn: Callable) -> Any:
    """The figure that `fn` returned: a Figure, or a mapping with a "figure" key."""
    from matplotlib.figure import Figure

    if isinstance(result, Mapping) and "figure" in result:
        result = result["figure"]
    if not isinstance(result, Figure):
        name = getattr(fn, "__name__", repr(fn))
        raise TypeError(
            f"fn ({name}) must return a matplotlib Figure or a mapping with a 'figure' key, "
            f"got {type(result).__name__}"
        )
    return result


def _options(name: str, values: Any) -> list[tuple[str, Any]]:
    """grid[name] as (label, value) pairs: plain values are labelled by str(value)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"grid[{name!r}] must be a non-empty list of values or (label, value) pairs, got {values!r}")
    pairs = [tuple(v) if isinstance(v, tuple) else (None, v) for v in values]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"grid[{name!r}]: a tuple must be a (label, value) pair, got {values!r}")
    if any(p[0] is None for p in pairs) and not all(p[0] is None for p in pairs):
        raise ValueError(f"grid[{name!r}] mixes plain values and (label, value) pairs: {values!r}")
    plain = [v for _, v in pairs]
    if len(set(map(repr, plain))) != len(plain):
        raise ValueError(f"grid[{name!r}] has repeated values: {plain!r}")
    return [(str(v) if label is None else str(label), v) for label, v in pairs]


def _index(name: str, options: list[tuple[str, Any]], value: Any) -> int:
    for i, (_, v) in enumerate(options):
        if v == value or (isinstance(v, tuple) and isinstance(value, (tuple, list)) and tuple(value) == v):
            return i
    raise ValueError(f"default[{name!r}] = {value!r} is not in grid[{name!r}] ({[v for _, v in options]!r})")


def _check(fn, grid, default, labels, live, max_frames):
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty mapping of argument name -> values, got {grid!r}")
    options = {name: _options(name, values) for name, values in grid.items()}
    for arg, mapping in (("default", default), ("labels", labels), ("live", live)):
        if not isinstance(mapping, Mapping):
            raise TypeError(f"{arg} must be a mapping keyed by grid names, got {type(mapping).__name__}")
        extra = sorted(set(mapping) - set(grid))
        if extra:
            raise ValueError(f"{arg} has names that are not in grid: {extra}; grid has {list(grid)}")
    missing = sorted(set(grid) - set(default))
    if missing:
        raise ValueError(f"default must give a value for every grid name; missing {missing}")
    index = {name: _index(name, options[name], default[name]) for name in grid}
    for name, control in live.items():
        if getattr(control, "value", object()) != default[name]:
            raise ValueError(
                f"live[{name!r}].value must equal default[{name!r}] = {default[name]!r}, "
                f"got {getattr(control, 'value', None)!r}"
            )
    if not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    n = math.prod(len(o) for o in options.values())
    if n > max_frames:
        sizes = {name: len(o) for name, o in options.items()}
        raise ValueError(f"grid has {n} points {sizes}, more than max_frames = {max_frames}: use a coarser grid")
    return options, index


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _control(name: str, options: list[tuple[str, Any]], index: int, label: str):
    """A SelectionSlider for a grid of plain numbers, a Dropdown otherwise; both carry `index`."""
    import ipywidgets as widgets

    numeric = all(_is_number(v) and lab == str(v) for lab, v in options)
    cls = widgets.SelectionSlider if numeric else widgets.Dropdown
    # a dropdown as wide as the column, so long labels are not cut
    kwargs = {"continuous_update": False} if numeric else {"layout": widgets.Layout(width="auto", max_width="100%")}
    control = cls(options=options, index=index, description=label, **kwargs)
    control.add_class(CONTROL_CLASS)
    return control


def live_or_frames(
    fn: Callable[..., Any],
    grid: Mapping[str, Sequence[Any]],
    *,
    default: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
    live: Mapping[str, Any] | None = None,
    max_frames: int = MAX_FRAMES,
    frames: bool | None = None,
):
    """A control panel for the figure ``fn(**values)``, live in Jupyter, precomputed in the book.

    Args:
        fn: draws the figure; called with one keyword per grid name, returns a matplotlib Figure or a
            mapping with a ``"figure"`` key (the library's ``*_view`` functions).
        grid: argument name -> the values the book precomputes, plain values or ``(label, value)``
            pairs (a grid of plain numbers gets a slider, anything else a dropdown). A name with a
            single value gets no control in the book (it is fixed there) but keeps its live one.
        default: argument name -> the value shown first; must be in the grid. Draw the chapter's
            static figure with these values, so the first frame is that figure.
        labels: argument name -> the control's description (default: the name).
        live: argument name -> an ipywidgets control for Jupyter (e.g. a FloatSlider over values off
            the grid), whose value must equal the default; the others get the book's control.
        max_frames: the most grid points allowed (each is one PNG in the page).
        frames: True to precompute, False for the live interact; None (default) asks
            :func:`building_book`.

    Returns:
        In the book: a ``VBox`` of the controls and nested ``Stack`` widgets of ``Image`` frames,
        tied by ``jslink`` (no kernel needed). In Jupyter: ``ipywidgets.interactive``.

    Raises:
        ValueError / TypeError naming the argument (``grid``, ``default``, ``live``, ...) when it
        does not fit.
    """
    labels = {} if labels is None else labels
    live = {} if live is None else live
    options, index = _check(fn, grid, default, labels, live, max_frames)
    if frames is None:
        frames = building_book()
    if frames:
        return _frames_panel(fn, options, index, labels)
    return _live_panel(fn, options, index, labels, live)


def _live_panel(fn, options, index, labels, live):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    controls = {
        name: live[name] if name in live else _control(name, opts, index[name], labels.get(name, name))
        for name, opts in options.items()
    }

    def show(**values):
        fig = _figure_of(fn(**values), fn)
        display(fig)
        plt.close(fig)

    return widgets.interactive(show, **controls)


def _frames_panel(fn, options, index, labels):
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    names = list(options)
    varying = [n for n in names if len(options[n]) > 1]
    images = {}
    for point in itertools.product(*(range(len(options[n])) for n in names)):
        fig = _figure_of(fn(**{n: options[n][i][1] for n, i in zip(names, point)}), fn)
        png = figure_png(fig)
        plt.close(fig)
        # no margin: the frame shrinks to the column like a static figure, with no scroll bar
        image = widgets.Image(value=png, format="png",
                              layout=widgets.Layout(max_width="100%", height="auto", margin="0"))
        image.add_class(FRAME_CLASS)
        images[tuple(i for n, i in zip(names, point) if n in varying)] = image
    controls = [_control(n, options[n], index[n], labels.get(n, n)) for n in varying]

    def tree(level: int, prefix: tuple[int, ...]):
        if level == len(varying):
            return images[prefix]
        name = varying[level]
        stack = widgets.Stack(
            children=[tree(level + 1, prefix + (i,)) for i in range(len(options[name]))],
            selected_index=index[name],
        )
        widgets.jslink((controls[level], "index"), (stack, "selected_index"))
        return stack

    panel = widgets.VBox([*controls, tree(0, ())])
    panel.add_class(PANEL_CLASS)
    return panel
