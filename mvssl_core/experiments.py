"""Read the records of ``scripts/experiments/ssl_runs.py`` (many runs per file) for the book's chapters.

A record (``results/ssl/<experiment>.json``, schema of :mod:`mvssl_core.results`) holds, under
``metrics.runs``, one entry per pre-training run::

    {"name": "byol/no EMA/s0", "family": "byol", "method": "byol", "variant": "no EMA", "seed": 0,
     "batch_size": 128, "epochs": 30, "labels": {...}, "steps": 330,
     "history": {"step": [...], "entropy": [...], ...},   # the trainer's logged metrics (null: not finite)
     "final": {"knn_top1": 0.91, "linear_top1": 0.97, ...}, "seconds": 33.1, "config": {...}}

and under ``metrics.random_init`` the accuracies of the untrained backbone per seed.
:func:`load_experiment` validates all of it (:class:`~mvssl_core.results.ResultsError` naming the
run and field); :func:`summarise` and :func:`mean_curve` give the mean and spread over seeds that
the chapters plot.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mvssl_core.results import ResultsError, load_results

__all__ = ["RUN_FIELDS", "load_experiment", "select", "Summary", "summarise", "mean_curve"]

RUN_FIELDS = {
    "name": str, "family": str, "method": str, "variant": str, "seed": int, "batch_size": int,
    "epochs": int, "labels": dict, "steps": int, "history": dict, "final": dict,
}


def load_experiment(path: str | os.PathLike) -> dict:
    """Load and validate a multi-run record; returns it (raises :class:`ResultsError`)."""
    record = load_results(path)
    metrics = record["metrics"]
    runs = metrics.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ResultsError(f"{path}: field 'metrics.runs' must be a non-empty list of runs")
    for i, run in enumerate(runs):
        where = f"{path}: metrics.runs[{i}]"
        if not isinstance(run, dict):
            raise ResultsError(f"{where} must be an object, got {type(run).__name__}")
        for name, kind in RUN_FIELDS.items():
            if name not in run:
                raise ResultsError(f"{where} ({run.get('name', '?')}): required field '{name}' is missing")
            value = run[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ResultsError(f"{where} ({run.get('name', '?')}): field '{name}' must be {kind.__name__}, "
                                   f"got {type(value).__name__}")
        steps = run["history"].get("step")
        if not isinstance(steps, list) or not steps:
            raise ResultsError(f"{where} ({run['name']}): 'history.step' must be a non-empty list")
        for key, values in run["history"].items():
            if not isinstance(values, list) or len(values) != len(steps):
                raise ResultsError(f"{where} ({run['name']}): 'history.{key}' must be a list as long as "
                                   f"'history.step' ({len(steps)})")
    if not isinstance(metrics.get("random_init"), list):
        raise ResultsError(f"{path}: field 'metrics.random_init' must be a list (one entry per seed)")
    return record


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
