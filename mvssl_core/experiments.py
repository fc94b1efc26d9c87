"""Read the records of ``scripts/experiments/ssl_runs.py`` (many runs per file) for the book's chapters.

A record (``results/ssl/<experiment>.json``, schema of :mod:`mvssl_core.results`) holds, under
``metrics.runs``, one entry per pre-training run::

    {"name": "byol/no EMA/s0", "family": "byol", "method": "byol", "variant": "no EMA", "seed": 0,
     "batch_size": 128, "epochs": 30, "labels": {...}, "steps": 330,
     "history": {"step": [...], "entropy": [...], ...},   # the trainer's logged metrics (null: not finite)
     "final": {"knn_top1": 0.91, "linear_top1": 0.97, ...}, "seconds": 33.1, "config": {...}}

and under ``metrics.random_init`` the accuracies of the untrained backbone per seed.
:func:`load_experiment` validates all of it against :data:`mvssl_core.schemas.EXPERIMENT` and the
checks across runs (:class:`~mvssl_core.results.ResultsError` naming the file, run and field);
:func:`summarise` and :func:`mean_curve` give the mean and spread over seeds that the chapters plot.
:func:`load_published` reads the published reference accuracies (``book/data/published_imagenet.yaml``),
validated the same way (:data:`mvssl_core.schemas.PUBLISHED`).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mvssl_core.results import ResultsError, load_results

__all__ = ["load_experiment", "merge_records", "select", "Summary", "summarise", "mean_curve", "load_published",
           "published_values"]


def load_experiment(path: str | os.PathLike) -> dict:
    """Load and validate a multi-run record of ``ssl_runs``; returns it.

    The file must follow :data:`mvssl_core.schemas.EXPERIMENT` (every run's fields, accuracies as fractions
    in [0, 1], whole numbers where counts belong) and the checks of :func:`mvssl_core.results.validate_results`
    (each run once, the seed of a run's name equal to its ``seed``, logged steps increasing strictly, methods
    of :data:`mvssl_core.methods.METHODS`).

    Raises:
        FileNotFoundError: no file at ``path``.
        ResultsError: naming the file, the run (index and name) and the field.
    """
    return load_results(path, kind="experiment")


def merge_records(records: list[dict], names: list[str] | None = None) -> dict:
    """One record holding the runs of several records of the same protocol (``ablation`` and
    ``ablation_clustering``: the same scale, seeds and data, other methods), for a chapter that reads them
    together. The untrained backbone's accuracies must be the same in all of them (the same seeds and
    backbone, so the same floor) and no run name may repeat; the first record's other fields are kept (its
    provenance too: a chapter shows each file's own). ``names`` (the files, say) only label the errors."""
    if not records:
        raise ValueError("merge_records needs at least one record")
    names = names or [f"record {i}" for i in range(len(records))]
    if len(names) != len(records):
        raise ValueError(f"names must give one name per record ({len(records)}), got {len(names)}")
    first = records[0]
    runs, seen = [], {}
    for name, record in zip(names, records):
        if record["metrics"]["random_init"] != first["metrics"]["random_init"]:
            raise ResultsError(f"{name}: metrics.random_init differs from {names[0]}'s: not the same seeds and "
                               "backbone, so the records cannot be read as one experiment")
        for run in record["metrics"]["runs"]:
            if run["name"] in seen:
                raise ResultsError(f"{name}: run {run['name']!r} is also in {seen[run['name']]}")
            seen[run["name"]] = name
            runs.append(run)
    return {**first, "metrics": {**first["metrics"], "runs": runs}}


def select(record: dict, **where: object) -> list[dict]:
    """The runs whose fields (or ``labels``) equal every keyword: ``select(r, family="byol", variant="no EMA")``."""
    def match(run: dict) -> bool:
        return all(run.get(k, run["labels"].get(k)) == v for k, v in where.items())

    return [run for run in record["metrics"]["runs"] if match(run)]


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (0 for one value) and count of a measurement over seeds."""

    mean: float
    sd: float
    n: int
    values: tuple[float, ...]

    @staticmethod
    def of(values: Iterable[float | None]) -> Summary:
        vals = tuple(float(v) for v in values if v is not None and math.isfinite(v))
        if not vals:
            return Summary(math.nan, math.nan, 0, ())
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return Summary(statistics.fmean(vals), sd, len(vals), vals)


def summarise(runs: Iterable[dict], key: Callable[[dict], object], value: Callable[[dict], float | None]
              ) -> dict[object, Summary]:
    """Group ``runs`` by ``key(run)`` and summarise ``value(run)`` over each group (seeds), in first-seen order."""
    groups: dict[object, list] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(value(run))
    return {k: Summary.of(v) for k, v in groups.items()}


def mean_curve(runs: list[dict], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and standard deviation over ``runs`` (seeds of one variant) of a logged metric, step by step.

    The runs must share their logged steps. Returns (steps, means, sds); a step where no run has a finite
    value gives NaN.
    """
    if not runs:
        raise ValueError("mean_curve needs at least one run")
    steps = runs[0]["history"]["step"]
    for run in runs[1:]:
        if run["history"]["step"] != steps:
            raise ValueError(f"runs {runs[0]['name']!r} and {run['name']!r} were logged at different steps")
    columns = [run["history"].get(metric, [None] * len(steps)) for run in runs]
    stats = [Summary.of(col[i] for col in columns) for i in range(len(steps))]
    return list(steps), [s.mean for s in stats], [s.sd for s in stats]


# ------------------------------------------------------------------------------------------------
# Published reference numbers (book/data/published_imagenet.yaml): reported by others, never measured here

def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _strict_yaml_loader(path: Path):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise ResultsError(f"{path}: the key '{key}' is given more than once in one mapping (line "
                                   f"{key_node.start_mark.line + 1}); a YAML reader keeps one of the values "
                                   "silently, so each key must appear once")
            seen.add(key)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def load_published(path: str | os.PathLike) -> dict:
    """Read and validate a file of published accuracies (``book/data/published_imagenet.yaml``).

    The file (YAML) holds a ``source`` block (``key`` of ``book/references.bib``, ``title``, ``venue``,
    ``openreview``, ``note``: non-empty strings), a ``metric`` and ``tables``: each table fixes some
    settings (``fixed``, e.g. ``{epochs: 400}``), varies one (``varies``, e.g. ``batch_size``) and lists
    ``rows`` of ``{method, top1, deltas}``: ``top1`` at the ``reference`` setting and ``deltas`` (points)
    at each setting of ``deltas_at``, in that order. Accuracies are percentages in [0, 100]. The fields
    follow :data:`mvssl_core.schemas.PUBLISHED`; across fields, each method appears once per table, the
    settings are distinct and every ``top1 + delta`` lies in [0, 100]. A key given twice is refused.

    Returns:
        The decoded file (a dict), unchanged.

    Raises:
        FileNotFoundError: no file at ``path``.
        ResultsError: the file is not YAML, or a field is missing or malformed (the message names the
            file and the field, e.g. ``tables.batch_size.rows[2].deltas``).
    """
    import yaml  # a dependency of mvssl_core (configs); imported here to keep this module light

    from mvssl_core.results import check_schema

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published-results file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_strict_yaml_loader(path))  # noqa: S506 (safe)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ResultsError(f"{path}: cannot read it as YAML ({str(e).splitlines()[0]})") from None

    def fail(field: str, message: str) -> None:
        raise ResultsError(f"{path}: field '{field}' {message}")

    check_schema(data, "published", str(path))
    for tname, table in data["tables"].items():
        where = f"tables.{tname}"
        settings = [table["reference"], *table["deltas_at"]]
        if len(set(settings)) != len(settings):
            fail(f"{where}.deltas_at", f"must be distinct settings other than the reference {table['reference']}, "
                                       f"got {table['deltas_at']}")
        seen: set[str] = set()
        for i, row in enumerate(table["rows"]):
            rwhere = f"{where}.rows[{i}]"
            method, top1, deltas = row["method"], row["top1"], row["deltas"]
            if method in seen:
                fail(f"{rwhere}.method", f"repeats {method!r}")
            seen.add(method)
            if not _is_number(top1):  # YAML's .nan and .inf are numbers to a schema
                fail(f"{rwhere}.top1", f"must be a percentage in [0, 100], got {top1!r:.60}")
            if len(deltas) != len(table["deltas_at"]) or not all(_is_number(d) for d in deltas):
                fail(f"{rwhere}.deltas", f"must be {len(table['deltas_at'])} numbers (one per deltas_at), "
                                         f"got {deltas!r:.60}")
            if not all(0.0 <= top1 + d <= 100.0 for d in deltas):
                fail(f"{rwhere}.deltas", f"take {method}'s top-1 {top1} outside [0, 100]: {deltas}")
    return data


def published_values(table: dict) -> dict[str, dict[int, float]]:
    """Absolute accuracies of a table of :func:`load_published`: ``{method: {setting: top1}}``.

    The reference setting comes first, then ``deltas_at`` in the table's order; each value is
    ``top1 + delta`` rounded to 0.1 point (the published precision).
    """
    return {row["method"]: {table["reference"]: float(row["top1"]),
                            **{s: round(row["top1"] + d, 1) for s, d in zip(table["deltas_at"], row["deltas"])}}
            for row in table["rows"]}
