"""The book's statistics, in one place: entropy floors, collapse, "did it train?", verdicts, provenance.

Every Part 2 chapter judges stored runs (:mod:`mvssl_core.experiments`) by the rules here, so that a
word such as "collapsed" or "reproduced" means the same thing on every page.

[0] Joe, "Estimation of entropy and other functionals of a multivariate density", Ann. Inst. Stat.
    Math. 41, 1989.
[1] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023 (arXiv 2307.10907).
[2] Welch, "The generalization of 'Student's' problem when several different population variances
    are involved", Biometrika 34, 1947.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from mvssl_core import _checks
from mvssl_core.experiments import load_experiment
from mvssl_core.results import ResultsError
from mvssl_core.special import vmf_log_normalizer

__all__ = [
    "vmf_kde_floor", "vmf_kde_ceiling", "vmf_reconstruction_max",
    "COLLAPSE_FRACTION", "entropy_margin", "is_collapsed", "run_collapsed",
    "trivial_loss", "Health", "health", "health_table", "health_markdown",
    "Effect", "welch", "one_sample",
    "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "NOT_TESTABLE", "VERDICTS", "verdict", "pool",
    "provenance_line", "load_or_explain",
]

# Range of the vMF-KDE entropy (Joe's estimator with the self term [0], as logged by the trainer)


def vmf_kde_floor(d: int, kappa: float) -> float:
    """KDE entropy of k identical points on S^{d-1}: -log C_d(kappa) - kappa (nats); no batch is lower."""
    d = _checks.positive_int(d, "d", minimum=2)
    kappa = _checks.positive(kappa, "kappa")
    return -float(vmf_log_normalizer(d, kappa)) - kappa


def vmf_kde_ceiling(k: int, d: int, kappa: float) -> float:
    """Largest KDE entropy of a batch of k points (far apart at the kernel's scale): floor + log k."""
    k = _checks.positive_int(k, "k")
    return vmf_kde_floor(d, kappa) + math.log(k)


def vmf_reconstruction_max(d: int, kappa: float) -> float:
    """vMF log-likelihood log C_d(kappa) + kappa of identical views: the reconstruction at collapse."""
    return -vmf_kde_floor(d, kappa)


# Collapse

COLLAPSE_FRACTION = 0.1
"""A batch has collapsed when its entropy is within this fraction of the log k window above the floor."""


def entropy_margin(entropy: float, k: int, d: int, kappa: float) -> float:
    """Entropy above the collapsed floor, in nats: 0 at collapse, at most log k (k unused but checked)."""
    _checks.positive_int(k, "k")
    return float(entropy) - vmf_kde_floor(d, kappa)


def is_collapsed(entropy: float, k: int, d: int, kappa: float) -> bool:
    """True when ``entropy_margin < COLLAPSE_FRACTION * log k`` (batch of k points on S^{d-1})."""
    return entropy_margin(entropy, k, d, kappa) < COLLAPSE_FRACTION * math.log(k)


def _resolved(run: dict, key: str) -> object:
    resolved = run.get("config", {}).get("resolved", {})
    if key not in resolved:
        raise ResultsError(f"run {run.get('name', '?')!r}: field 'config.resolved.{key}' is missing; "
                           "re-run it to store the resolved configuration")
    return resolved[key]


def _tail_mean(run: dict, key: str, last: int) -> float:
    """Mean of the last ``last`` finite logged values of ``history[key]`` (NaN when none is finite)."""
    if key not in run["history"]:
        raise ResultsError(f"run {run.get('name', '?')!r}: field 'history.{key}' is missing")
    values = [float(v) for v in run["history"][key] if v is not None and math.isfinite(v)][-last:]
    return float(np.mean(values)) if values else math.nan


def _monitor(run: dict) -> tuple[int, int, float]:
    """(k, d, kappa) of a run's logged entropy."""
    return run["batch_size"], int(_resolved(run, "projection_dim")), float(_resolved(run, "monitor_kappa"))


def run_collapsed(run: dict, last: int = 5) -> bool:
    """:func:`is_collapsed` on the mean of a run's last ``last`` finite logged entropies."""
    last = _checks.positive_int(last, "last")
    h = _tail_mean(run, "entropy", last)
    if math.isnan(h):
        raise ResultsError(f"run {run.get('name', '?')!r}: no finite value in 'history.entropy'")
    return is_collapsed(h, *_monitor(run))


# Did the method train?

_CLUSTER_KEYS = {"swav": "n_prototypes", "deepcluster": "n_prototypes", "dino": "head_out"}
_TRIVIAL_NAMES = {"swav": "log K", "dino": "log K", "deepcluster": "log K", "simclr": "log(2N - 1)",
                  "swav_er": "-(H + Rec) of uniform assignments", "dino_er": "-(H + Rec) of uniform assignments",
                  "deepcluster_er": "-(H + Rec) of uniform assignments"}
_NO_TRIVIAL = ("byol", "byol_er", "simclr_er")


def trivial_loss(method: str, batch_size: int, resolved: dict) -> float | None:
    """Training loss of the trivial solution of a method, in nats; None when none is informative.

    swav, dino, deepcluster: log K (uniform predictions; K = ``resolved["n_prototypes"]``, or
    ``resolved["head_out"]`` for dino). simclr: log(2N - 1), N = ``batch_size`` (collapsed
    embeddings). swav_er, dino_er, deepcluster_er: 0 with both terms (uniform assignments: H = log K,
    Rec = -log K); log K with the reconstruction alone (``resolved["er_terms"]``: the loss is the
    cross-entropy, log K for uniform predictions); None with the entropy alone (uniform assignments are
    that objective's optimum, not a trivial solution). byol, byol_er, simclr_er: None (BYOL's loss is 0 at
    collapse).
    """
    if method in _NO_TRIVIAL:
        return None
    if method == "simclr":
        return math.log(2 * _checks.positive_int(batch_size, "batch_size") - 1)
    base = method.removesuffix("_er")
    if base not in _CLUSTER_KEYS or (method != base and method not in _TRIVIAL_NAMES):
        raise ValueError(f"method must be one of {sorted([*_TRIVIAL_NAMES, *_NO_TRIVIAL])}, got {method!r}")
    if method != base:
        terms = resolved.get("er_terms", "both")
        if terms == "both":
            return 0.0
        if terms == "entropy":
            return None
        if terms != "reconstruction":
            raise ResultsError(f"field 'config.resolved.er_terms' must be both, entropy or reconstruction, "
                               f"got {terms!r}")
    key = _CLUSTER_KEYS[base]
    if key not in resolved:
        raise ResultsError(f"field 'config.resolved.{key}' is missing (K of the trivial {method} loss)")
    ks = resolved[key] if isinstance(resolved[key], (list, tuple)) else [resolved[key]]
    return float(np.mean([math.log(_checks.positive_int(k, key)) for k in ks]))  # DeepCluster: mean over heads


def _trivial_name(method: str, resolved: dict) -> str:
    if method.endswith("_er") and resolved.get("er_terms", "both") == "reconstruction":
        return "log K (the cross-entropy of uniform predictions)"
    return _TRIVIAL_NAMES[method]


@dataclass(frozen=True)
class Health:
    """Did a run train? Its end-of-training signals against their trivial values (accuracies in [0, 1])."""

    name: str
    method: str
    seed: int
    effective_rank: float
    entropy_margin: float
    margin_needed: float
    loss: float
    trivial_loss: float | None
    knn: float
    knn_untrained: float
    linear: float
    linear_untrained: float
    failures: tuple[str, ...]

    @property
    def trains(self) -> bool:
        return not self.failures


def _untrained(random_init: list[dict], seed: int, key: str) -> float:
    """The untrained backbone's accuracy at ``seed`` (the mean over seeds when it is missing)."""
    if not random_init:
        raise ResultsError("random_init is empty: no untrained accuracy to compare with")
    same = [e[key] for e in random_init if e.get("seed") == seed]
    values = same or [e[key] for e in random_init]
    return float(np.mean([math.nan if v is None else v for v in values]))


def _accuracy(run: dict, key: str) -> float:
    value = run["final"].get(key)
    return math.nan if value is None else float(value)


def health(run: dict, random_init: list[dict], *, min_rank: float = 2.0, loss_margin: float = 0.05) -> Health:
    """Check that a run trained: effective rank > min_rank, entropy margin >= COLLAPSE_FRACTION log k,
    loss < trivial_loss - loss_margin (when there is one), kNN above the untrained backbone's of the
    same seed. Signals are means of the last 5 finite logged values; NaN fails every criterion.

    Returns:
        :class:`Health`; its ``failures`` name every criterion missed, ``trains`` is True when none.
    """
    k, d, kappa = _monitor(run)
    try:
        trivial = trivial_loss(run["method"], run["batch_size"], run["config"]["resolved"])
    except ResultsError as e:
        raise ResultsError(f"run {run['name']!r}: {e}") from None
    rank, loss = _tail_mean(run, "effective_rank", 5), _tail_mean(run, "loss", 5)
    margin = entropy_margin(_tail_mean(run, "entropy", 5), k, d, kappa)
    needed = COLLAPSE_FRACTION * math.log(k)
    knn, knn0 = _accuracy(run, "knn_top1"), _untrained(random_init, run["seed"], "knn_top1")
    failures = []
    if not rank > min_rank:
        failures.append(f"effective rank {rank:.2f} <= {min_rank:g}")
    if not margin >= needed:
        failures.append(f"entropy {margin:.2f} nats above the floor < {needed:.2f} needed")
    if trivial is not None and not loss < trivial - loss_margin:
        name = _trivial_name(run["method"], run["config"]["resolved"])
        failures.append(f"loss {loss:.4f} not below its trivial value {name} = "
                        f"{trivial:.4f} - {loss_margin:g}")
    if not knn > knn0:
        failures.append(f"kNN {100 * knn:.1f}% not above the untrained backbone's {100 * knn0:.1f}%")
    return Health(run["name"], run["method"], run["seed"], rank, margin, needed, loss, trivial,
                  knn, knn0, _accuracy(run, "linear_top1"), _untrained(random_init, run["seed"], "linear_top1"),
                  tuple(failures))


def health_table(record: dict) -> list[Health]:
    """:func:`health` of every run of a multi-run record, in order."""
    return [health(run, record["metrics"]["random_init"]) for run in record["metrics"]["runs"]]


def _num(x: float | None, digits: int, scale: float = 1.0, unit: str = "") -> str:
    return "—" if x is None or not math.isfinite(x) else f"{scale * x:.{digits}f}{unit}"


def health_markdown(healths: Iterable[Health], *, label: Callable[[Health], str] | None = None) -> str:
    """GitHub-flavoured markdown table of :class:`Health` rows; ``label`` names a run (default: its name)."""
    rows = ["| run | effective rank | entropy above floor (needed) | loss (trivial) | kNN (untrained) "
            "| linear (untrained) | trains? |", "|---|---:|---:|---:|---:|---:|---|"]
    for h in healths:
        trains = "yes" if h.trains else "no: " + "; ".join(h.failures)
        cells = [(label or (lambda x: x.name))(h), _num(h.effective_rank, 2),
                 f"{_num(h.entropy_margin, 2)} ({_num(h.margin_needed, 2)})",
                 f"{_num(h.loss, 4)} ({_num(h.trivial_loss, 4)})",
                 f"{_num(h.knn, 1, 100, '%')} ({_num(h.knn_untrained, 1, 100, '%')})",
                 f"{_num(h.linear, 1, 100, '%')} ({_num(h.linear_untrained, 1, 100, '%')})", trains]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


# Verdicts: Welch's t interval [2]


@dataclass(frozen=True)
class Effect:
    """A difference of means, its two-sided (1 - alpha) confidence interval and t-test."""

    diff: float
    low: float
    high: float
    t: float
    dof: float
    p: float
    n_a: int
    n_b: int


def _values(x: Sequence[float], name: str) -> np.ndarray:
    v = np.asarray(x, dtype=float).ravel()
    if v.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} must hold finite values, got {v.tolist()}")
    return v


def _mean_var(v: np.ndarray) -> tuple[float, float]:
    """Mean and sample variance; exactly (value, 0) for equal values (no rounding of the mean)."""
    return (float(v[0]), 0.0) if v.max() == v.min() else (float(v.mean()), float(np.var(v, ddof=1)))


def _effect(diff: float, se2: float, dof: float, alpha: float, n_a: int, n_b: int) -> Effect:
    """The interval and test of ``diff`` with squared standard error ``se2`` (0: the point rule)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if math.isinf(se2):  # a group of one value: no variance estimate
        return Effect(diff, -math.inf, math.inf, math.nan, math.nan, math.nan, n_a, n_b)
    if se2 == 0.0:  # zero variance: the interval is the point; t = 0 (p = 1) for a zero difference
        t, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
        return Effect(diff, diff, diff, t, math.nan, p, n_a, n_b)
    se = math.sqrt(se2)
    half = float(stats.t.ppf(1 - alpha / 2, dof)) * se
    t = diff / se
    return Effect(diff, diff - half, diff + half, t, dof, float(2 * stats.t.sf(abs(t), dof)), n_a, n_b)


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> Effect:
    """Welch's t-test and interval of mean(a) - mean(b), Welch-Satterthwaite dof [2].

    A group of one value has no variance estimate: the interval is (-inf, inf), t, dof and p NaN.
    Both groups of zero variance: the interval is the point diff (t = 0, p = 1 when diff is 0;
    t = +-inf, p = 0 otherwise), dof NaN.
    """
    a, b = _values(a, "a"), _values(b, "b")
    (mean_a, var_a), (mean_b, var_b) = _mean_var(a), _mean_var(b)
    if a.size < 2 or b.size < 2:
        return _effect(mean_a - mean_b, math.inf, math.nan, alpha, a.size, b.size)
    va, vb = var_a / a.size, var_b / b.size
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1)) if va + vb > 0 else math.nan
    return _effect(mean_a - mean_b, va + vb, dof, alpha, a.size, b.size)


def one_sample(a: Sequence[float], mu: float, alpha: float = 0.05) -> Effect:
    """Student's t-test and interval of mean(a) - mu (dof n - 1); n_b = 0. Degenerate cases as in :func:`welch`."""
    a = _values(a, "a")
    if not math.isfinite(mu):
        raise ValueError(f"mu must be finite, got {mu}")
    mean, var = _mean_var(a)
    se2 = var / a.size if a.size > 1 else math.inf
    return _effect(mean - float(mu), se2, a.size - 1.0, alpha, a.size, 0)


REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE = (
    "reproduced", "not reproduced", "inconclusive", "not testable: the method did not train")
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)


def verdict(effect: Effect, direction: int, *, min_effect: float = 0.0, trains: bool = True) -> str:
    """The verdict on a claim that diff has sign ``direction`` (+1 or -1), by more than ``min_effect``.

    REPRODUCED when the (1 - alpha) interval lies strictly beyond ``direction * min_effect`` on the
    claimed side, NOT_REPRODUCED when it lies strictly on the other side of 0, INCONCLUSIVE otherwise,
    NOT_TESTABLE when the method did not train. Under equal means (normal data) P(REPRODUCED) is at
    most alpha / 2 (2.5% at alpha = 0.05), up to Welch's approximation of the dof.
    """
    if direction not in (1, -1) or isinstance(direction, bool):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if not (math.isfinite(min_effect) and min_effect >= 0):
        raise ValueError(f"min_effect must be finite and >= 0, got {min_effect}")
    if not trains:
        return NOT_TESTABLE
    low, high = (effect.low, effect.high) if direction == 1 else (-effect.high, -effect.low)
    if low > min_effect:
        return REPRODUCED
    if high < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def pool(verdicts: list[str]) -> str:
    """One verdict of several (e.g. over settings): the common one, else "mixed: 2 reproduced, 1 inconclusive"."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("verdicts must not be empty")
    if any(v not in VERDICTS for v in verdicts):
        raise ValueError(f"verdicts must hold values of {VERDICTS}, got {verdicts}")
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return "mixed: " + ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if v in verdicts)


# Provenance and loading

_OUT_FLAGS = ("--out", "--out-dir")


def _root_of(path: Path) -> Path | None:
    """The checkout holding ``path`` (a folder with ``mvssl_core/`` and ``book/``), or None."""
    for folder in path.resolve().parents:
        if (folder / "mvssl_core").is_dir() and (folder / "book").is_dir():
            return folder
    return None


def _inside(target: str, root: Path | None) -> bool:
    p = Path(target)
    return ".." not in p.parts if not p.is_absolute() else root is not None and p.resolve().is_relative_to(root)


def _shown_command(command: str, root: Path | None) -> str:
    """The command without an ``--out``/``--out-dir`` argument that points outside the repository."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    shown, i = [], 0
    while i < len(words):
        flag, eq, value = words[i].partition("=")
        step = 1 if eq or flag not in _OUT_FLAGS else 2  # "--out=x" or "--out x"
        if flag in _OUT_FLAGS and not eq:
            value = words[i + 1] if i + 1 < len(words) else ""
        if flag not in _OUT_FLAGS or _inside(value, root):
            shown.extend(words[i:i + step])
        i += step
    return shlex.join(shown)


def provenance_line(record: dict, path: str | os.PathLike) -> str:
    """One markdown sentence: which file, written by which command, at which commit, when, on what."""
    path = Path(path)
    root = _root_of(path)
    shown = path.resolve().relative_to(root).as_posix() if root is not None else path.name
    prov, hw = record["provenance"], record["provenance"]["hardware"]
    commit = f"at commit `{prov['git_commit'][:12]}`" if prov["git_commit"] else "outside a git checkout"
    dirty = " (with uncommitted changes)" if prov["git_dirty"] else ""
    threads = hw.get("threads")
    machine = [hw["cpu"], hw.get("cpu_count") and f"{hw['cpu_count']} cores",
               threads and ("one thread per run" if threads == 1 else f"{threads} threads per run"),
               hw.get("torch") and f"torch {hw['torch']}"]
    wall = record["metrics"].get("wall_seconds")
    tail = "" if not isinstance(wall, (int, float)) or not math.isfinite(wall) else \
        f"; wall time {wall:.0f} s" if wall < 120 else f"; wall time {wall / 60:.0f} min"
    return (f"**Data:** `{shown}`, written by `{_shown_command(prov['command'], root)}` {commit}{dirty} "
            f"on {prov['date'][:10]} ({', '.join(m for m in machine if m)}){tail}.")


def load_or_explain(path: str | os.PathLike, script_command: str,
                    loader: Callable[[str | os.PathLike], dict] = load_experiment) -> dict:
    """``loader(path)``, with errors that say which command produces the file."""
    try:
        return loader(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing. This page needs the stored runs: produce them with "
                                f"`{script_command}`") from None
    except ResultsError as e:
        raise ResultsError(f"{e}. Re-run `{script_command}`.") from None
