"""mvssl_core.widgets.live_or_frames: the book's controls, precomputed (HTML) or live (Jupyter)."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mvssl_core import widgets as lib  # noqa: E402
from mvssl_core.widgets import BOOK_ENV, building_book, figure_png, live_or_frames  # noqa: E402


def line(a, b=1.0):
    """A figure that depends on both arguments."""
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, a * b])
    ax.set_title(f"a = {a}, b = {b}")
    return fig


def view(a, b=1.0):
    """Like the chapters' *_view functions: a dict with the figure."""
    return {"figure": line(a, b), "a": a}


GRID = {"a": [1, 2, 3], "b": [("half", 0.5), ("one", 1.0)]}
DEFAULT = {"a": 2, "b": 1.0}


def _walk(panel):
    """(controls, frame for every index tuple) of a frames panel, by following the Stack tree."""
    controls = [c for c in panel.children if lib.CONTROL_CLASS in c._dom_classes]
    (root,) = [c for c in panel.children if isinstance(c, widgets.Stack)]

    def frames(node, prefix):
        if isinstance(node, widgets.Image):
            return {prefix: node}
        out = {}
        for i, child in enumerate(node.children):
            out.update(frames(child, prefix + (i,)))
        return out

    return controls, root, frames(root, ())


def _links_from(control):
    from ipywidgets.widgets.widget import _instances
    from ipywidgets.widgets.widget_link import Link

    return [w for w in _instances.values() if isinstance(w, Link) and w.source[0] is control]


@pytest.mark.parametrize("fn", [line, view])
def test_every_frame_is_the_live_calls_figure(fn):
    panel = live_or_frames(fn, GRID, default=DEFAULT, frames=True)
    controls, root, frames = _walk(panel)
    assert [c.description for c in controls] == ["a", "b"]
    assert isinstance(controls[0], widgets.SelectionSlider) and isinstance(controls[1], widgets.Dropdown)
    assert len(frames) == 6
    for (i, j), image in frames.items():
        a, b = GRID["a"][i], GRID["b"][j][1]
        fig = line(a, b)
        assert image.value == figure_png(fig), (a, b)
        plt.close(fig)
    # every grid point draws a different figure
    assert len({image.value for image in frames.values()}) == 6
    assert not plt.get_fignums(), "frames left figures open"


def test_default_frame_is_selected_and_controls_drive_the_stacks():
    panel = live_or_frames(line, GRID, default=DEFAULT, frames=True)
    controls, root, frames = _walk(panel)
    assert [c.index for c in controls] == [1, 1]  # a = 2, b = 1.0
    assert [c.value for c in controls] == [2, 1.0]
    assert root.selected_index == 1 and root.children[1].selected_index == 1
    fig = line(2, 1.0)
    selected = root.children[root.selected_index].children[root.children[root.selected_index].selected_index]
    assert selected.value == figure_png(fig)  # the default frame is the figure drawn at the defaults
    plt.close(fig)
    # a: one link to the root stack; b: one link to each of the 3 inner stacks, all from `index`
    assert {(l.source[1], l.target[1]) for l in _links_from(controls[0])} == {("index", "selected_index")}
    assert {id(l.target[0]) for l in _links_from(controls[0])} == {id(root)}
    assert {id(l.target[0]) for l in _links_from(controls[1])} == {id(s) for s in root.children}


def test_single_value_gets_no_control_in_the_book():
    panel = live_or_frames(line, {"a": [1, 2], "b": [0.5]}, default={"a": 1, "b": 0.5}, frames=True)
    controls, root, frames = _walk(panel)
    assert [c.description for c in controls] == ["a"]
    assert sorted(frames) == [(0,), (1,)]
    fig = line(2, 0.5)
    assert frames[(1,)].value == figure_png(fig)
    plt.close(fig)


def test_live_panel_uses_the_given_controls_and_draws_the_same_figure(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda fig: shown.append(figure_png(fig)))
    slider = widgets.FloatSlider(value=2.0, min=0.0, max=5.0)
    w = live_or_frames(line, GRID, default=DEFAULT, live={"a": slider}, frames=False)
    assert isinstance(w, widgets.interactive)
    assert w.children[0] is slider and isinstance(w.children[1], widgets.Dropdown)
    shown.clear()
    slider.value = 2.5  # off the grid: live only
    fig = line(2.5, 1.0)
    assert shown[-1] == figure_png(fig)
    plt.close(fig)


def test_building_book_reads_the_environment(monkeypatch):
    monkeypatch.delenv(BOOK_ENV, raising=False)
    assert building_book() is False
    monkeypatch.setenv(BOOK_ENV, "1")
    assert building_book() is True
    panel = live_or_frames(line, {"a": [1], "b": [1.0]}, default={"a": 1, "b": 1.0})
    assert lib.PANEL_CLASS in panel._dom_classes
    monkeypatch.setenv(BOOK_ENV, "0")
    assert isinstance(live_or_frames(line, {"a": [1], "b": [1.0]}, default={"a": 1, "b": 1.0}),
                      widgets.interactive)
    monkeypatch.setenv(BOOK_ENV, "yes")
    with pytest.raises(ValueError, match=BOOK_ENV):
        building_book()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"fn": 3}, TypeError, "fn must be callable"),
        ({"grid": {}}, ValueError, "grid must be a non-empty mapping"),
        ({"grid": {"a": [], "b": [1.0]}}, ValueError, r"grid\['a'\] must be a non-empty list"),
        ({"grid": {"a": "123", "b": [1.0]}}, ValueError, r"grid\['a'\] must be a non-empty list"),
        ({"grid": {"a": [1, 1], "b": [1.0]}}, ValueError, r"grid\['a'\] has repeated values"),
        ({"grid": {"a": [1, ("two", 2)], "b": [1.0]}}, ValueError, r"grid\['a'\] mixes"),
        ({"grid": {"a": [(1, 2, 3)], "b": [1.0]}}, ValueError, r"grid\['a'\]: a tuple must be a \(label, value\)"),
        ({"default": {"a": 2}}, ValueError, r"default must give a value for every grid name; missing \['b'\]"),
        ({"default": {"a": 7, "b": 1.0}}, ValueError, r"default\['a'\] = 7 is not in grid\['a'\]"),
        ({"default": {"a": 2, "b": 1.0, "c": 0}}, ValueError, r"default has names that are not in grid: \['c'\]"),
        ({"labels": {"z": "zed"}}, ValueError, r"labels has names that are not in grid: \['z'\]"),
        ({"live": {"a": widgets.FloatSlider(value=3.0)}}, ValueError, r"live\['a'\].value must equal default\['a'\]"),
        ({"live": [1]}, TypeError, "live must be a mapping"),
        ({"max_frames": 5}, ValueError, r"grid has 6 points \{'a': 3, 'b': 2\}, more than max_frames = 5"),
        ({"max_frames": 0}, ValueError, "max_frames must be a positive int"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = {"fn": line, "grid": GRID, "default": DEFAULT, "frames": True, **kwargs}
    with pytest.raises(error, match=match):
        live_or_frames(args.pop("fn"), args.pop("grid"), **args)


def test_fn_that_returns_no_figure_is_named():
    def no_figure(a, b):
        return None

    with pytest.raises(TypeError, match=r"fn \(no_figure\) must return a matplotlib Figure"):
        live_or_frames(no_figure, GRID, default=DEFAULT, frames=True)
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        figure_png("not a figure")
