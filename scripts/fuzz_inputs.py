#!/usr/bin/env python
"""Fuzz the inputs of mvssl_core and count what happens (issue 15, "Nothing silently wrong").

Four groups of bad inputs, each case a small record (group, name, a call, the names its error
message should mention). The issue's findings (items 1-8) sit in these groups:

1. ``functions``: the public functions and classes of ``mvssl_core`` (entropy, bounds, losses,
   reconstruction, heads, ema, optim, views, special, critics, methods), called with one argument
   replaced by a bad value from a per-kind table (NaN / inf / empty / wrong-ndim / int tensors,
   mismatched shapes, zero rows on the sphere, non-probability codes, zero or negative
   temperatures and kappas, ``'no'`` for a bool, numbers as strings, None, ``progress=2.0``...;
   item 8's swav codes, ``leave_one_out='no'``, zero rows, ``progress=2.0``).
2. ``cli``: ``python -m mvssl_core`` (``cli.main`` in-process, or a subprocess for what could eat
   memory or hang) with bad ``--set`` values (item 4: NaN / inf keys, ``optim.final_lr=.nan``), flags
   (item 8: ``--seed 2**70``, ``--size 10**6``, ``linear-eval --epochs 0 / --lr -0.1 / --batch-size 0``),
   a diverging run (item 7), paths, malformed YAML and YAML alias bombs (item 7), and ImageFolders
   (items 2, 3, 8): val/ with other classes than train/, an unreadable class folder, an unreadable
   ``train/``, every image unreadable. Unreadable means ``os.scandir`` / ``open`` patched to raise
   ``PermissionError`` (no permission bit stops root).
3. ``run_folders`` (items 1, 6, 8): a tiny run, then corrupted (checkpoint.pt zero-byte / flipped byte
   / truncated / step beyond the end / a ``results_file`` pointing elsewhere, metrics.jsonl lines
   malformed / missing / duplicated, a second writer on the same ``--out``), then ``--resume`` /
   ``evaluate`` / ``linear-eval`` on it. An edited checkpoint is written with a matching content
   hash (so the edited field's own check answers), but for the case that tests the hash itself.
4. ``results_files`` (item 5): copies of the shipped ``results/`` files, mutated (duplicated run,
   accuracy 7.5 / -0.3 / "0.9", name/seed mismatch, negative or non-monotone steps, unknown method,
   missing field, ``1e999``, ``NaN``, duplicate JSON key...), loaded the way the book loads them
   (``load_experiment`` for ``results/ssl/``, ``load_results`` for the others).

Not fuzzed here (no bad input to vary; they belong to the tests of train.py and dist.py): item 7's
``init_process_group`` timeout and inf BatchNorm statistics, item 8's RNG state after a mid-epoch resume,
item 9.

Each outcome is one of:

* ``clear``: an exception of the ValueError / TypeError family (ConfigError, CheckpointError,
  ResultsError... are ValueErrors; FileNotFoundError / FileExistsError for paths) whose message
  names what the case names (the argument, field, flag, key or path: as a whole word, or as a
  substring for a dotted name or a path); for the command line: a non-zero exit status with exactly
  one ``error:`` line on stderr that names it, and no traceback. One exception, by design of item 3:
  an unreadable class folder among readable ones is counted and reported and the run goes on, so
  there a ``DataWarning`` that names the folder is ``clear`` (a refusal is judged as above).
* ``silent``: the bad input was accepted (no error; exit status 0).
* ``unclear``: anything else: another exception type (IndexError, RuntimeError from torch
  internals, AttributeError, KeyError...), a clear type whose message does not name the input, a
  traceback on the command line, or a hang past the case's timeout.
* ``by_design``: one narrow, explicit allow-list, counted in its own column (never as ``clear``, and
  not a failure under ``--strict``): a ``NaN entry`` or ``inf entry`` tensor passed to the forward of
  an ``nn.Module`` (a head's, a critic's or a method's: the specs marked ``module_forward``) that is
  accepted *and whose output holds a NaN or inf*. By issue 15's design a forward checks types and
  shapes only, with no per-step host-device sync: non-finite values propagate, as in torch, and the
  trainer's divergence check catches them. If such a call returns a finite output the entry was
  swallowed: that is ``silent``. A refusal is judged as any other (``clear`` or ``unclear``); every
  other bad input to a forward (empty, wrong shape or dtype, None...) is judged as usual.

A case whose *valid* call fails is a harness bug, not a finding: it is skipped and printed as a note.

Usage::

    python scripts/fuzz_inputs.py            # all cases (about a minute on 2 cores)
    python scripts/fuzz_inputs.py --quick    # a fixed subset (seconds; tests/test_fuzz_inputs.py runs it)
    python scripts/fuzz_inputs.py --list     # also one line per case with its outcome
    python scripts/fuzz_inputs.py --json tally.json --group results_files
    python scripts/fuzz_inputs.py --strict   # exit 1 if a case is silent or unclear (else always 0)

Deterministic: every case runs after ``torch.manual_seed(0)``; the subsets and byte offsets are fixed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GROUPS = ("functions", "cli", "run_folders", "results_files")
OUTCOMES = ("clear", "silent", "unclear", "by_design")
# the only bad values a module's forward may let through (see the docstring: ``by_design``)
PROPAGATED_LABELS = ("NaN entry", "inf entry")
CLEAR_TYPES: tuple[type[BaseException], ...] = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
)


# ------------------------------------------------------------------------------------------------
# cases and the classifier


@dataclass
class Case:
    group: str
    name: str
    fn: Callable[[], Any]
    expect: tuple[str, ...]  # the message must name one of these (case-insensitive)
    timeout: float = 30.0
    quick: bool = True
    propagates: bool = False  # a NaN / inf entry into a module's forward: ``by_design`` if the output is non-finite


@dataclass
class CliResult:
    """What a command line run returned: its exit status and its stderr."""

    code: int
    stderr: str


@dataclass
class Reported:
    """A command line run whose designed answer to a partly unusable input is to go on and report it
    (issue 15, item 3: an unreadable class folder among readable ones is counted and reported, the run
    goes on): its exit status, its stderr and the messages of the ``DataWarning`` warnings it raised."""

    code: int
    stderr: str
    warnings: list[str]


@dataclass
class Outcome:
    group: str
    name: str
    outcome: str
    detail: str
    seconds: float = 0.0


class CaseTimeout(BaseException):
    """Raised by the alarm when a case runs past its timeout (a BaseException: not swallowed by
    ``except Exception`` in the code under test)."""


def _on_alarm(signum, frame):  # noqa: ARG001
    raise CaseTimeout()


def _names(message: str, expect: tuple[str, ...]) -> bool:
    """Whether ``message`` names one of ``expect`` (as a whole word where the name is a word)."""
    low = message.lower()
    for name in expect:
        n = name.lower()
        if re.fullmatch(r"\w+", n):
            if re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", low):
                return True
        elif n in low:
            return True
    return False


def _first_line(text: str, limit: int = 160) -> str:
    text = text.strip()
    line = text.splitlines()[0] if text else ""
    return line[:limit]


def classify_cli(result: CliResult, expect: tuple[str, ...]) -> tuple[str, str]:
    """``clear`` / ``silent`` / ``unclear`` for a command line run, and a one-line detail."""
    if result.code == 0:
        return "silent", "exit 0"
    err = result.stderr
    if "Traceback (most recent call last)" in err:
        last = [ln for ln in err.strip().splitlines() if ln.strip()]
        return "unclear", f"exit {result.code}, traceback: {last[-1][:150] if last else ''}"
    errors = [ln for ln in err.splitlines() if re.search(r"\berror:", ln)]
    if len(errors) != 1:
        return "unclear", f"exit {result.code}, {len(errors)} error lines: {_first_line(err)}"
    line = errors[0]
    if not _names(line, expect):
        return "unclear", f"exit {result.code}, message does not name {'/'.join(expect)}: {line[:150]}"
    return "clear", f"exit {result.code}: {line[:150]}"


def _nonfinite(value: Any) -> bool:
    """Whether ``value`` (a tensor, a number, or lists / tuples / dicts of them) holds a NaN or inf."""
    import torch

    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
            return False
        return not bool(torch.isfinite(value.detach()).all())
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_nonfinite(v) for v in value)
    return False


def classify(value: Any = None, exc: BaseException | None = None, expect: tuple[str, ...] = (),
             propagates: bool = False) -> tuple[str, str]:
    """Classify what a case's call did: returned ``value`` or raised ``exc``.

    ``propagates`` marks a NaN / inf entry into a module's forward: accepted with a non-finite output it is
    ``by_design``; accepted with a finite output it is ``silent`` (the entry was swallowed).
    """
    if exc is None and propagates:
        if _nonfinite(value):
            return "by_design", "propagated: the output holds NaN/inf (a forward does not read values)"
        return "silent", "accepted, and the output is finite: the NaN/inf entry was swallowed"
    if exc is None:
        if isinstance(value, Reported):
            if value.code != 0:
                return classify_cli(CliResult(value.code, value.stderr), expect)
            named = [w for w in value.warnings if _names(w, expect)]
            if named:
                return "clear", f"exit 0, reported: DataWarning: {_first_line(named[0], 140)}"
            if value.warnings:
                first = _first_line(value.warnings[0], 120)
                return "unclear", f"exit 0, DataWarning does not name {'/'.join(expect)}: {first}"
            return "silent", "exit 0, nothing reported"
        if isinstance(value, CliResult):
            return classify_cli(value, expect)
        return "silent", "accepted"
    if isinstance(exc, CaseTimeout):
        return "unclear", "timed out (a hang)"
    kind = type(exc).__name__
    message = str(exc)
    detail = f"{kind}: {_first_line(message, 150)}"
    if isinstance(exc, CLEAR_TYPES) and _names(message, expect):
        return "clear", detail
    if isinstance(exc, CLEAR_TYPES):
        return "unclear", f"does not name {'/'.join(expect)}: {detail}"
    return "unclear", detail


def run_case(case: Case, tmp_root: str = "") -> Outcome:
    import torch

    torch.manual_seed(0)
    start = time.perf_counter()
    value, exc = None, None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, case.timeout)
    try:
        value = case.fn()
    except CaseTimeout as e:
        exc = e
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 (SystemExit included: that is an outcome too)
        exc = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if isinstance(exc, SystemExit):
        value, exc = CliResult(int(exc.code or 0) if not isinstance(exc.code, str) else 1, str(exc.code)), None
    outcome, detail = classify(value, exc, case.expect, propagates=case.propagates)
    if tmp_root:
        detail = detail.replace(tmp_root, "<tmp>")
    return Outcome(case.group, case.name, outcome, detail, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------
# group 1: public functions


def _bad_tensor(good, *, sphere: bool = False, pair: bool = False, one_sample: bool = True):
    import torch

    out = {}
    nan = good.clone().float()
    nan.view(-1)[0] = float("nan")
    inf = good.clone().float()
    inf.view(-1)[0] = float("inf")
    out["NaN entry"] = nan
    out["inf entry"] = inf
    out["empty"] = good[:0]
    out["one more dim"] = good.unsqueeze(0)
    if good.dim() >= 2:
        out["flattened"] = good.reshape(-1)
    else:
        out["0-d"] = good[0]
    out["int dtype"] = good.round().long()
    out["None"] = None
    out["nested list"] = good.tolist()
    out["string"] = "tensor"
    if one_sample and good.dim() >= 2:
        out["one sample"] = good[:1]
    if sphere and good.dim() >= 2:
        z = good.clone()
        z[0] = 0.0
        out["zero row"] = z
    if pair and good.dim() >= 2:
        out["one more row"] = torch.cat([good, good[:1]])
        if good.shape[1] > 1:
            out["narrower"] = good[:, :-1]
    return out


def _bad_probs(good, pair: bool = False):
    p = good.clone()
    out = _bad_tensor(good, pair=pair, one_sample=pair)  # one distribution alone has a well-defined entropy
    out["rows sum to 2"] = good * 2
    neg = p.clone()
    neg[0, 0], neg[0, 1] = -0.5, neg[0, 1] + neg[0, 0] + 0.5
    out["negative entry"] = neg
    out["logits, not probabilities"] = good * 10 - 3
    return out


def _bad_list(good: list):
    bad = {"empty list": [], "bare tensor": good[0], "None": None, "list with None": [good[0], None][: max(2, len(good))],
           "list with a string": ["x"] * len(good)}
    nan = [t.clone() for t in good]
    nan[0].view(-1)[0] = float("nan")
    bad["NaN entry"] = nan
    inf = [t.clone() for t in good]
    inf[0].view(-1)[0] = float("inf")
    bad["inf entry"] = inf
    if len(good) >= 2 and good[1].dim() >= 2:
        bad["second narrower"] = [good[0], good[1][:, :-1]]
        bad["second one row more"] = [good[0], __import__("torch").cat([good[1], good[1][:1]])]
    bad["1-D entries"] = [t.reshape(-1) for t in good]
    bad["int entries"] = [t.round().long() for t in good]
    return bad


def _scalars(kind: str) -> dict[str, Any]:
    nan, inf = float("nan"), float("inf")
    table = {
        "pos": {"0": 0.0, "negative": -0.1, "NaN": nan, "inf": inf, "string '0.1'": "0.1", "None": None, "True": True},
        "posopt": {"0": 0.0, "negative": -0.1, "NaN": nan, "inf": inf, "string '0.1'": "0.1", "True": True},
        "nonneg": {"negative": -0.1, "NaN": nan, "inf": inf, "string '0.1'": "0.1", "True": True},
        "float": {"NaN": nan, "inf": inf, "string '0.1'": "0.1", "None": None},
        "frac": {"negative": -0.1, "1.5": 1.5, "NaN": nan, "string '0.5'": "0.5", "None": None, "True": True},
        "bool": {"string 'no'": "no", "string 'False'": "False", "2": 2, "None": None, "0.5": 0.5},
        "boolopt": {"string 'no'": "no", "string 'False'": "False", "2": 2, "0.5": 0.5},
        "int": {"0": 0, "negative": -1, "2.5": 2.5, "string '3'": "3", "None": None, "True": True, "NaN": nan},
        "intopt": {"0": 0, "negative": -1, "2.5": 2.5, "string '3'": "3", "True": True},
        "nonneg_int": {"negative": -1, "2.5": 2.5, "string '3'": "3", "True": True, "None": None},
        # an integer of either sign (item_seed's index: -1 and -2 name the sampler's and the workers' streams)
        "any_int": {"2.5": 2.5, "string '3'": "3", "True": True, "None": None},
        "choice": {"unknown": "nope", "empty string": "", "None": None, "3": 3},
        "progress": {"2.0": 2.0, "negative": -0.5, "NaN": nan, "inf": inf, "string '0.5'": "0.5", "None": None},
        "d": {"0": 0, "negative": -3, "2.5": 2.5, "string '8'": "8", "True": True, "NaN": nan},
        "module": {"None": None, "string": "model", "tensor": __import__("torch").zeros(3)},
        "dtype": {"string 'float32'": "float32", "None": None, "3": 3},
        "generator": {"int": 3, "string": "seed"},
        "scale": {"reversed": (0.5, 0.1), "zero low": (0.0, 1.0), "negative": (-0.1, 1.0), "above 1": (0.1, 1.5),
                  "string": "0.1", "None": None, "NaN": (nan, 1.0), "one number": (0.5,)},
        "normalize": {"string": "imagenet", "zero std": ((0.5, 0.5, 0.5), (0.0, 0.0, 0.0)),
                      "mean and std of different lengths": ((0.5, 0.5, 0.5), (0.2,)),
                      "NaN": ((nan, 0.5, 0.5), (0.2, 0.2, 0.2))},
        "jitter": {"two numbers": (0.4, 0.4), "string": "strong", "negative": (-0.4, 0.4, 0.2, 0.1),
                   "NaN": (nan, 0.4, 0.2, 0.1)},
        "pairs": {"out of range": [(0, 9)], "negative": [(-7, 0)], "string": "ab", "one index": [(0,)], "empty": []},
    }
    return table[kind]


@dataclass
class FnSpec:
    name: str
    fn: Callable[..., Any]
    good: Callable[[], dict]  # fresh valid keyword arguments
    kinds: dict[str, str]  # argument -> kind of bad values
    post: Callable[[Any, dict], Any] | None = None  # called on the result (e.g. forward a built module)
    module_forward: bool = False  # the forward of an nn.Module: NaN / inf entries may propagate (``by_design``)


def _bad_values(kind: str, good_value: Any) -> dict[str, Any]:
    if kind in ("emb", "sphere", "emb_pair", "sphere_pair", "tensor", "scores", "square"):
        bad = _bad_tensor(good_value, sphere=kind.startswith("sphere"), pair=kind.endswith("_pair"),
                          one_sample=kind != "tensor")
        if kind in ("square", "tensor"):  # a batch of covariances; a module's forward broadcasts leading dims
            bad.pop("one more dim")
        if kind in ("scores", "square") and good_value.dim() == 2:
            bad["not square"] = good_value[:, :-1]
        if kind == "square":
            import torch

            asym = good_value.clone()
            asym[0, 1] += 5.0
            bad["not symmetric"] = asym
            bad["negative definite"] = -good_value
            bad["singular"] = torch.zeros_like(good_value)
        return bad
    if kind in ("probs", "probs_pair"):
        return _bad_probs(good_value, pair=kind == "probs_pair")
    if kind == "elementwise":  # broadcasting tensors of numbers (Bessel orders and arguments)
        import torch

        nan, inf, neg = good_value.clone(), good_value.clone(), good_value.clone()
        nan[0], inf[0], neg[0] = float("nan"), float("inf"), -1.0
        return {"NaN entry": nan, "inf entry": inf, "negative entry": neg, "None": None, "string": "tensor",
                "empty": good_value[:0], "complex dtype": good_value.to(torch.complex64)}
    if kind == "center":
        bad = _bad_tensor(good_value, one_sample=False)
        for k in ("flattened", "one more dim", "int dtype"):
            bad.pop(k, None)
        bad["narrower"] = good_value[..., :-1]
        return bad
    if kind == "labels":
        return {"float dtype": good_value.float(), "out of range": good_value + 100, "negative": good_value - 100,
                "empty": good_value[:0], "2-D": good_value.unsqueeze(1), "None": None, "one more": __import__("torch").cat([good_value, good_value[:1]])}
    if kind == "tlist":
        return _bad_list(good_value)
    if kind == "plist":
        bad = _bad_list(good_value)
        bad["codes are logits"] = [t * 10 - 3 for t in good_value]
        bad["codes rows sum to 2"] = [t * 2 for t in good_value]
        return bad
    if kind == "llist":  # lists of label tensors
        return {"empty list": [], "bare tensor": good_value[0], "float labels": [t.float() for t in good_value],
                "out of range": [t + 100 for t in good_value], "negative": [t - 100 for t in good_value],
                "None": None}
    if kind.startswith("spec:"):
        cls = kind.split(":", 1)[1]
        optional = cls.endswith("?")
        cls = cls.rstrip("?")
        base = {"MLPSpec": {"hidden": 16, "out": 8}, "DINOHeadSpec": {"hidden": 16, "bottleneck": 8, "out": 12},
                "PrototypeSpec": {"n_prototypes": 6}}[cls]
        first = next(iter(base))
        bad = {"None": None, "string": "mlp", f"{first}=0": {**base, first: 0}, f"{first}=-1": {**base, first: -1},
               f"{first}='16'": {**base, first: "16"}, "unknown field": {**base, "bogus": 1}}
        if optional:
            del bad["None"]
        if cls == "MLPSpec":  # the other specs have defaults for every field
            bad["missing fields"] = {}
        return bad
    return _scalars(kind)


def _function_specs() -> list[FnSpec]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mvssl_core import bounds, critics, ema, entropy, heads, losses, optim, reconstruction, special, views
    from mvssl_core.backbones import ConvNet
    from mvssl_core.methods import build_method

    N, D, K = 8, 4, 5

    def z(seed=0, n=N, d=D):
        g = torch.Generator().manual_seed(seed)
        return F.normalize(torch.randn(n, d, generator=g), dim=1)

    def logits(seed=0, n=N, k=K):
        return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))

    def probs(seed=0, n=N, k=K):
        return logits(seed, n, k).softmax(-1)

    def scores(seed=0):
        return torch.randn(N, N, generator=torch.Generator().manual_seed(seed))

    def cov():
        a = torch.randn(D, D, generator=torch.Generator().manual_seed(1))
        return a @ a.T + torch.eye(D)

    def labels(seed=0, k=K):
        return torch.randint(0, k, (N,), generator=torch.Generator().manual_seed(seed))

    def tiny_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(D, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))

    def lars(**kw):
        return optim.LARS(tiny_model().parameters(), **kw)

    def set_lr(lr):
        opt = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
        optim.set_lr(opt, lr)
        return opt.param_groups[0]["lr"]

    def kmeans(**kw):
        return losses.spherical_kmeans(**kw)

    specs = [
        # entropy
        FnSpec("entropy.kde_entropy", entropy.kde_entropy,
               lambda: dict(z=z(), kernel="vmf", kappa=10.0, estimator="joe", leave_one_out=False, chunk_size=None,
                            distributed=False),
               dict(z="sphere", kernel="choice", kappa="pos", estimator="choice", leave_one_out="bool",
                    chunk_size="intopt", distributed="bool")),
        FnSpec("entropy.kde_entropy[gaussian]", entropy.kde_entropy,
               lambda: dict(z=z(), kernel="gaussian", bandwidth=0.5), dict(bandwidth="pos")),
        FnSpec("entropy.kde_log_density", entropy.kde_log_density,
               lambda: dict(z=z(), kernel="vmf", kappa=10.0, leave_one_out=True, chunk_size=4),
               dict(z="sphere", kernel="choice", kappa="pos", leave_one_out="bool", chunk_size="intopt")),
        FnSpec("entropy.discrete_entropy", entropy.discrete_entropy, lambda: dict(probs=probs(), distributed=False),
               dict(probs="probs", distributed="bool")),
        FnSpec("entropy.knn_entropy", entropy.knn_entropy, lambda: dict(x=z(), k=1), dict(x="emb", k="int")),
        FnSpec("entropy.gaussian_entropy", entropy.gaussian_entropy, lambda: dict(cov=cov()), dict(cov="square")),
        FnSpec("entropy.auto_chunk_size", entropy.auto_chunk_size,
               lambda: dict(n_queries=64, n_keys=64, dtype=torch.float32),
               dict(n_queries="int", n_keys="int", dtype="dtype")),
        # bounds
        FnSpec("bounds.infonce", bounds.infonce, lambda: dict(scores=scores()), dict(scores="scores")),
        FnSpec("bounds.nwj", bounds.nwj, lambda: dict(scores=scores()), dict(scores="scores")),
        FnSpec("bounds.infonce_from_embeddings", bounds.infonce_from_embeddings,
               lambda: dict(z1=z(0), z2=z(1), temperature=0.1, distributed=False),
               dict(z1="sphere_pair", z2="sphere_pair", temperature="pos", distributed="bool")),
        FnSpec("bounds.er_bound", bounds.er_bound,
               lambda: dict(z1=z(0), z2=z(1), kappa=10.0, kernel="vmf", estimator="joe", leave_one_out=False,
                            chunk_size=None, distributed=False),
               dict(z1="sphere_pair", z2="sphere_pair", kappa="pos", kernel="choice", estimator="choice",
                    leave_one_out="bool", chunk_size="intopt", distributed="bool")),
        FnSpec("bounds.er_bound[gaussian]", bounds.er_bound,
               lambda: dict(z1=z(0), z2=z(1), kernel="gaussian", bandwidth=0.5), dict(bandwidth="pos")),
        FnSpec("bounds.er_bound_discrete", bounds.er_bound_discrete,
               lambda: dict(logits1=logits(0), logits2=logits(1), temperature=0.1, target_temperature=0.05,
                            symmetric=True, distributed=False),
               dict(logits1="emb_pair", logits2="emb_pair", temperature="pos", target_temperature="posopt",
                    symmetric="bool", distributed="bool")),
        FnSpec("bounds.er_bound_discrete_multicrop", bounds.er_bound_discrete_multicrop,
               lambda: dict(logits=[logits(0), logits(1)], target_logits=[logits(2), logits(3)], pairs=None,
                            temperature=0.1, target_temperature=None, entropy_branch="target"),
               dict(logits="tlist", target_logits="tlist", pairs="pairs", temperature="pos",
                    target_temperature="posopt", entropy_branch="choice")),
        FnSpec("bounds.alignment", bounds.alignment, lambda: dict(z1=z(0), z2=z(1), alpha=2.0),
               dict(z1="emb_pair", z2="emb_pair", alpha="pos")),
        FnSpec("bounds.uniformity", bounds.uniformity, lambda: dict(z=z(), t=2.0, distributed=False),
               dict(z="emb", t="pos", distributed="bool")),
        # losses
        FnSpec("losses.nt_xent", losses.nt_xent, lambda: dict(z1=z(0), z2=z(1), temperature=0.1, distributed=False),
               dict(z1="sphere_pair", z2="sphere_pair", temperature="pos", distributed="bool")),
        FnSpec("losses.byol_loss", losses.byol_loss, lambda: dict(prediction=z(0), target=z(1), distributed=False),
               dict(prediction="sphere_pair", target="sphere_pair", distributed="bool")),
        FnSpec("losses.dino_loss", losses.dino_loss,
               lambda: dict(student=[logits(0), logits(1)], teacher=[logits(2), logits(3)], center=torch.zeros(1, K),
                            student_temperature=0.1, teacher_temperature=0.04, distributed=False),
               dict(student="tlist", teacher="tlist", center="center", student_temperature="pos",
                    teacher_temperature="pos", distributed="bool")),
        FnSpec("losses.DINOCenter", losses.DINOCenter, lambda: dict(dim=K, momentum=0.9),
               dict(dim="int", momentum="frac")),
        FnSpec("losses.teacher_temperature", losses.teacher_temperature,
               lambda: dict(progress=0.5, start=0.04, end=0.07, warmup=0.1),
               dict(progress="progress", start="pos", end="pos", warmup="frac")),
        FnSpec("losses.sinkhorn", losses.sinkhorn, lambda: dict(scores=logits(), epsilon=0.05, n_iters=3),
               dict(scores="emb", epsilon="pos", n_iters="int")),
        FnSpec("losses.swav_loss", losses.swav_loss,
               lambda: dict(scores=[logits(0), logits(1)], codes=[probs(2), probs(3)], temperature=0.1),
               dict(scores="tlist", codes="plist", temperature="pos")),
        FnSpec("losses.SwAVQueue", losses.SwAVQueue, lambda: dict(n_crops=2, length=16, dim=D),
               dict(n_crops="int", length="int", dim="int")),
        FnSpec("losses.spherical_kmeans", kmeans,
               lambda: dict(x=z(), k=3, n_iters=2, generator=torch.Generator().manual_seed(0), chunk_size=4),
               dict(x="sphere", k="int", n_iters="nonneg_int", generator="generator", chunk_size="int")),
        FnSpec("losses.deepcluster_loss", losses.deepcluster_loss,
               lambda: dict(scores=[logits(0), logits(1)], targets=[labels(0), labels(1)], temperature=0.1),
               dict(scores="tlist", targets="llist", temperature="pos")),
        # reconstruction
        FnSpec("reconstruction.vmf_log_likelihood", reconstruction.vmf_log_likelihood,
               lambda: dict(z2=z(0), mean=z(1), kappa=10.0, reduction="mean"),
               dict(z2="sphere_pair", mean="sphere_pair", kappa="pos", reduction="choice")),
        FnSpec("reconstruction.gaussian_log_likelihood", reconstruction.gaussian_log_likelihood,
               lambda: dict(z2=z(0), mean=z(1), bandwidth=0.5, reduction="mean"),
               dict(z2="emb_pair", mean="emb_pair", bandwidth="pos", reduction="choice")),
        FnSpec("reconstruction.discrete_log_likelihood", reconstruction.discrete_log_likelihood,
               lambda: dict(target_probs=probs(0), logits=logits(1), reduction="none"),
               dict(target_probs="probs_pair", logits="emb_pair", reduction="choice")),
        # heads
        FnSpec("heads.MLPSpec", heads.MLPSpec,
               lambda: dict(hidden=16, out=8, layers=2, bn=True, last_bn=False, activation="relu"),
               dict(hidden="int", out="int", layers="int", bn="bool", last_bn="bool", activation="choice")),
        FnSpec("heads.DINOHeadSpec", heads.DINOHeadSpec,
               lambda: dict(hidden=16, bottleneck=8, out=12, layers=3, bn=False, activation="gelu",
                            norm_last_layer=True),
               dict(hidden="int", bottleneck="int", out="int", layers="int", bn="bool", activation="choice",
                    norm_last_layer="bool")),
        FnSpec("heads.PrototypeSpec", heads.PrototypeSpec, lambda: dict(n_prototypes=6, heads=1),
               dict(n_prototypes="int", heads="int")),
        FnSpec("heads.build_mlp", heads.build_mlp, lambda: dict(in_dim=D, spec=heads.MLPSpec(16, 8)),
               dict(in_dim="int", spec="spec:MLPSpec")),
        FnSpec("heads.DINOHead", heads.DINOHead, lambda: dict(in_dim=D, spec=heads.DINOHeadSpec(16, 8, 12)),
               dict(in_dim="int", spec="spec:DINOHeadSpec")),
        FnSpec("heads.WeightNormLinear", heads.WeightNormLinear, lambda: dict(in_dim=D, out_dim=6, learn_gain=False),
               dict(in_dim="int", out_dim="int", learn_gain="bool")),
        FnSpec("heads.Prototypes", heads.Prototypes, lambda: dict(dim=D, spec=heads.PrototypeSpec(6)),
               dict(dim="int", spec="spec:PrototypeSpec")),
        FnSpec("heads.Prototypes.forward", lambda z: heads.Prototypes(D, heads.PrototypeSpec(6))(z),
               lambda: dict(z=z()), dict(z="tensor"), module_forward=True),
        FnSpec("heads.DINOHead.forward", lambda x: heads.DINOHead(D, heads.DINOHeadSpec(16, 8, 12))(x),
               lambda: dict(x=z()), dict(x="tensor"), module_forward=True),
        # ema
        FnSpec("ema.frozen_copy", ema.frozen_copy, lambda: dict(module=tiny_model()), dict(module="module")),
        FnSpec("ema.ema_update_", ema.ema_update_,
               lambda: dict(teacher=tiny_model(), student=tiny_model(), momentum=0.99),
               dict(teacher="module", student="module", momentum="frac")),
        FnSpec("ema.cosine_momentum", ema.cosine_momentum, lambda: dict(progress=0.5, base=0.996, final=1.0),
               dict(progress="progress", base="frac", final="frac")),
        # optim
        FnSpec("optim.param_groups", optim.param_groups, lambda: dict(model=tiny_model(), weight_decay=1e-4),
               dict(model="module", weight_decay="nonneg")),
        FnSpec("optim.LARS", lars,
               lambda: dict(lr=0.1, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, trust_norm="paper",
                            eps=0.0),
               dict(lr="pos", momentum="frac", weight_decay="nonneg", trust_coefficient="pos", trust_norm="choice",
                    eps="nonneg")),
        FnSpec("optim.warmup_cosine", optim.warmup_cosine,
               lambda: dict(step=3, total_steps=10, warmup_steps=2, base_value=0.1, final_value=0.0,
                            start_value=0.0),
               dict(step="nonneg_int", total_steps="int", warmup_steps="nonneg_int", base_value="float",
                    final_value="float", start_value="float")),
        FnSpec("optim.scaled_lr", optim.scaled_lr, lambda: dict(base_lr=0.3, batch_size=512, reference_batch=256),
               dict(base_lr="pos", batch_size="int", reference_batch="int")),
        FnSpec("optim.set_lr", set_lr, lambda: dict(lr=0.1), dict(lr="nonneg")),
        # views
        FnSpec("views.blur_kernel_size", views.blur_kernel_size, lambda: dict(size=32), dict(size="int")),
        FnSpec("views.view_transform", views.view_transform,
               lambda: dict(size=16, scale=(0.08, 1.0), flip=0.5, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8,
                            grayscale_p=0.2, blur_p=0.5, blur_size=None, solarize_p=0.1),
               dict(size="int", scale="scale", flip="frac", jitter="jitter", jitter_p="frac", grayscale_p="frac",
                    blur_p="frac", blur_size="intopt", solarize_p="frac", normalize="normalize")),
        FnSpec("views.simclr_views", views.simclr_views,
               lambda: dict(size=16, n_views=2, strength=1.0, scale=(0.08, 1.0), blur=None, flip=0.5),
               dict(size="int", n_views="int", strength="nonneg", scale="scale", blur="boolopt", flip="frac",
                    normalize="normalize")),
        FnSpec("views.byol_views", views.byol_views, lambda: dict(size=16, scale=(0.08, 1.0), blur=None),
               dict(size="int", scale="scale", blur="boolopt", normalize="normalize")),
        FnSpec("views.dino_views", views.dino_views,
               lambda: dict(size=16, n_local=2, local_size=8, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)),
               dict(size="int", n_local="nonneg_int", local_size="intopt", global_scale="scale",
                    local_scale="scale", blur="boolopt")),
        FnSpec("views.swav_views", views.swav_views,
               lambda: dict(size=16, n_global=2, n_local=2, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14)),
               dict(size="int", n_global="int", n_local="nonneg_int", global_size="intopt", local_size="intopt",
                    global_scale="scale", local_scale="scale")),
        FnSpec("views.local_crop_size", views.local_crop_size, lambda: dict(size=32, reference_local=96),
               dict(size="int", reference_local="int")),
        FnSpec("views.eval_transform", views.eval_transform, lambda: dict(size=16, resize=None),
               dict(size="int", normalize="normalize", resize="intopt")),
        FnSpec("views.build_views", views.build_views, lambda: dict(name="simclr", size=16),
               dict(name="choice", size="int")),
        FnSpec("views.item_seed", views.item_seed, lambda: dict(seed=0, epoch=1, index=2),
               dict(seed="nonneg_int", epoch="nonneg_int", index="any_int")),
        # special
        FnSpec("special.log_iv", special.log_iv, lambda: dict(nu=1.5, x=3.0), dict(nu="nonneg", x="nonneg")),
        FnSpec("special.log_iv[tensor]", special.log_iv, lambda: dict(nu=torch.tensor([0.5, 1.5]), x=torch.tensor([1.0, 2.0])),
               dict(nu="elementwise", x="elementwise")),
        FnSpec("special.bessel_ratio", special.bessel_ratio, lambda: dict(nu=1.5, x=3.0), dict(nu="nonneg", x="nonneg")),
        FnSpec("special.log_sphere_area", special.log_sphere_area, lambda: dict(d=8), dict(d="d")),
        FnSpec("special.uniform_sphere_entropy", special.uniform_sphere_entropy, lambda: dict(d=8), dict(d="d")),
        FnSpec("special.vmf_log_normalizer", special.vmf_log_normalizer, lambda: dict(d=8, kappa=10.0),
               dict(d="d", kappa="pos")),
        FnSpec("special.vmf_mean_resultant_length", special.vmf_mean_resultant_length, lambda: dict(d=8, kappa=10.0),
               dict(d="d", kappa="pos")),
        FnSpec("special.vmf_entropy", special.vmf_entropy, lambda: dict(d=8, kappa=10.0), dict(d="d", kappa="pos")),
        # critics
        FnSpec("critics.Bilinear", critics.Bilinear, lambda: dict(dim=D, scale=0.1), dict(dim="int", scale="nonneg")),
        FnSpec("critics.SeparableCritic", critics.SeparableCritic, lambda: dict(dim=D, spec=heads.MLPSpec(16, 8)),
               dict(dim="int", spec="spec:MLPSpec")),
        FnSpec("critics.ConcatCritic", critics.ConcatCritic, lambda: dict(dim=D, spec=heads.MLPSpec(16, 1, bn=False)),
               dict(dim="int", spec="spec:MLPSpec")),
        FnSpec("critics.GaussianQ", critics.GaussianQ, lambda: dict(dim=D, spec=heads.MLPSpec(16, 8), momentum=0.9),
               dict(dim="int", spec="spec:MLPSpec", momentum="frac")),
        FnSpec("critics.Bilinear.forward", lambda a, b: critics.Bilinear(D)(a, b), lambda: dict(a=z(0), b=z(1)),
               dict(a="tensor", b="tensor"), module_forward=True),
    ]

    # methods: construction with one bad hyper-parameter, and forward with bad views / progress / indices
    small = {
        "simclr": dict(projector=heads.MLPSpec(16, 8)),
        "byol": dict(projector=heads.MLPSpec(16, 8), predictor=heads.MLPSpec(16, 8)),
        "dino": dict(head=heads.DINOHeadSpec(hidden=16, bottleneck=8, out=12)),
        "swav": dict(projector=heads.MLPSpec(16, 8), prototypes=heads.PrototypeSpec(6), queue_length=0),
        "deepcluster": dict(projector=heads.MLPSpec(16, 8), prototypes=heads.PrototypeSpec(6, heads=2),
                            dataset_size=N),
    }
    hyper_kinds = {
        "simclr": dict(temperature="pos", er="bool", er_terms="choice", kappa="pos", estimator="choice",
                       monitor_kappa="pos", projector="spec:MLPSpec"),
        "byol": dict(base_momentum="frac", final_momentum="frac", er="bool", er_terms="choice", kappa="pos",
                     entropy_branch="choice", predictor="spec:MLPSpec?"),
        "dino": dict(n_global="int", student_temperature="pos", teacher_temperature_start="pos",
                     teacher_temperature_end="pos", teacher_temperature_warmup="frac", center_momentum="frac",
                     centering="boolopt", base_momentum="frac", freeze_last_layer="frac", er="bool",
                     entropy_branch="choice", head="spec:DINOHeadSpec"),
        "swav": dict(n_global="int", temperature="pos", epsilon="pos", sinkhorn_iters="int", queue_length="nonneg_int",
                     queue_start="frac", freeze_prototypes="frac", er="bool", target_temperature="posopt",
                     prototypes="spec:PrototypeSpec"),
        "deepcluster": dict(dataset_size="int", n_global="int", temperature="pos", kmeans_iters="nonneg_int",
                            seed="nonneg_int", er="bool", target_temperature="posopt", freeze_prototypes="bool",
                            prefill="bool"),
    }

    def images(seed, n=N, size=16):
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def make(name, **hyper):
        torch.manual_seed(0)
        backbone = ConvNet(widths=(8, 16))
        return build_method(name, backbone, backbone.feature_dim, **{**small[name.removesuffix("_er")], **hyper})

    for name in small:
        def build(_name=name, **hyper):
            return make(_name, **hyper)
        good_hyper = {k: v for k, v in small[name].items()}
        specs.append(FnSpec(f"methods.build_method({name})", build, lambda g=good_hyper: dict(g),
                            hyper_kinds[name]))

        def forward(views, progress, indices=None, _name=name):
            model = make(_name)
            return model(views, progress=progress, indices=indices)

        def good_views(_name=name):
            d = dict(views=[images(0), images(1)], progress=0.5)
            if _name == "deepcluster":
                d["indices"] = torch.arange(N)
            return d
        kinds = dict(views="tlist", progress="progress")
        if name == "deepcluster":
            kinds["indices"] = "labels"
        specs.append(FnSpec(f"methods.{name}.forward", forward, good_views, kinds, module_forward=True))
    return specs


def function_cases() -> tuple[list[Case], list[str]]:
    """The cases of group 1, and the specs whose valid call failed (a broken harness, reported)."""
    import torch

    cases, broken = [], []
    for spec in _function_specs():
        torch.manual_seed(0)
        try:
            spec.fn(**spec.good())
        except Exception as e:  # noqa: BLE001
            broken.append(f"{spec.name}: the valid call fails: {type(e).__name__}: {_first_line(str(e), 120)}")
            continue
        for arg, kind in spec.kinds.items():
            good = spec.good()
            for label, _ in _bad_values(kind, good.get(arg, _default_of(spec, arg))).items():
                def call(_spec=spec, _arg=arg, _kind=kind, _label=label):
                    kw = _spec.good()
                    kw[_arg] = _bad_values(_kind, kw.get(_arg, _default_of(_spec, _arg)))[_label]
                    return _spec.fn(**kw)
                expect: tuple[str, ...] = (arg,)
                if arg == "spec" and "=" in label:  # heads' own spec: naming its bad field is clear
                    expect = (arg, label.split("=")[0])
                elif arg == "spec" and label in ("unknown field", "missing fields"):
                    expect = (arg, "bogus", "hidden", "out")
                if label in ("one more row", "narrower"):  # a mismatch: naming either tensor of the pair is clear
                    expect = (arg, *(a for a, k in spec.kinds.items() if k.endswith("_pair") and a != arg))
                cases.append(Case("functions", f"{spec.name}: {arg}={label}", call, expect, timeout=20.0,
                                  propagates=spec.module_forward and label in PROPAGATED_LABELS))
    for i, case in enumerate(cases):
        case.quick = i % 6 == 0
    return cases, broken


def _default_of(spec: FnSpec, arg: str) -> Any:
    import inspect

    try:
        p = inspect.signature(spec.fn).parameters.get(arg)
    except (TypeError, ValueError):
        return None
    if p is None or p.default is inspect.Parameter.empty:
        return None
    return p.default


# ------------------------------------------------------------------------------------------------
# command line helpers (groups 2 and 3)

TINY = [
    "--data", "shapes", "--size", "16", "--backbone", "convnet", "--steps", "2", "--batch-size", "8",
    "--num-workers", "0", "--no-progress", "--device", "cpu",
    "--set", "data.n=32",
    "--set", "model.kwargs={widths: [8, 16]}",
    "--set", "hyper.projector={hidden: 16, out: 8}",
    "--set", "optim.name=sgd",
    "--set", "eval.max_train=16",
    "--set", "log_every=1",
]
NO_EVAL = ["--set", "eval.knn=false", "--set", "eval.linear=false"]


def cli_inprocess(argv: list[str]) -> CliResult:
    """``python -m mvssl_core ARGV`` in this process: the exit status and stderr; an exception that
    escapes ``main`` is what Python would print: a traceback."""
    from mvssl_core.cli import main

    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=err)
        except CaseTimeout:
            raise
        except BaseException:  # noqa: BLE001
            traceback.print_exc(file=err)
            code = 1
    return CliResult(int(code or 0), err.getvalue())


def cli_subprocess(argv: list[str], timeout: float = 60.0, memory_gb: float = 6.0) -> CliResult:
    """``python -m mvssl_core ARGV`` in a child process with a memory cap; a timeout is a hang."""
    def limit():
        cap = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    try:
        proc = subprocess.run([sys.executable, "-m", "mvssl_core", *argv], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limit, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        raise CaseTimeout() from None
    return CliResult(proc.returncode, proc.stderr)


class Workdir:
    """A temporary folder, and the tiny run folders that groups 2 and 3 copy (made once, on demand)."""

    def __init__(self, root: str):
        self.root = Path(root)
        self._finished: Path | None = None
        self._stopped: Path | None = None
        self._n = 0

    def fresh(self, label: str) -> Path:
        self._n += 1
        # "_" on both sides of every word of the label: no word of it can match an expected name by itself
        path = self.root / f"{self._n:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', label)[:40]}_"
        path.mkdir(parents=True)
        return path

    def finished(self) -> Path:
        """A finished tiny SimCLR run (checkpoint.pt, metrics.jsonl, results.json, config.yaml)."""
        if self._finished is None:
            out = self.root / "base-finished"
            res = cli_inprocess(["pretrain", "--method", "simclr", *TINY, "--out", str(out)])
            if res.code != 0:
                raise RuntimeError(f"the base run failed: {res.stderr[-2000:]}")
            self._finished = out
        return self._finished

    def stopped(self) -> Path:
        """A pre-empted tiny run: 2 of 4 steps done, a checkpoint at step 2, no results.json."""
        if self._stopped is None:
            out = self.root / "base-stopped"
            res = cli_inprocess(["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--steps", "4",
                                 "--set", "checkpoint_every=1", "--stop-after", "2", "--out", str(out)])
            if res.code != 0 or not (out / "checkpoint.pt").is_file():
                raise RuntimeError(f"the stopped base run failed: {res.stderr[-2000:]}")
            self._stopped = out
        return self._stopped

    def copy(self, base: Path, label: str) -> Path:
        dest = self.fresh(label) / "run"
        shutil.copytree(base, dest)
        return dest


# ------------------------------------------------------------------------------------------------
# group 2: the command line


def cli_cases(wd: Workdir) -> list[Case]:
    cases: list[Case] = []

    def pre(label: str, extra: list[str], expect: tuple[str, ...], *, quick=True, sub=False, timeout=60.0,
            method: list[str] | None = None, out: bool = True):
        def call():
            argv = ["pretrain", *(method if method is not None else ["--method", "simclr"]), *TINY, *NO_EVAL,
                    "--steps", "1"]
            if out:
                argv += ["--out", str(wd.fresh(label) / "run")]
            argv += extra
            return cli_subprocess(argv, timeout=timeout) if sub else cli_inprocess(argv)
        cases.append(Case("cli", f"pretrain {label}", call, expect, timeout=timeout + 10, quick=quick))

    sets = [
        ("optim.lr=nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("optim.lr=inf", "optim.lr"),
        ("optim.lr='0.1'", "optim.lr"), ("optim.lr=-0.1", "optim.lr"), ("optim.lr=no", "optim.lr"),
        ("hyper.temperature=nan", "temperature"), ("hyper.temperature=0", "temperature"),
        ("hyper.temperature=-1", "temperature"), ("hyper.temperature=abc", "temperature"),
        ("hyper.temperature=.inf", "temperature"), ("hyper.kappa=0", "kappa"), ("hyper.er='no'", "er"),
        ("hyper.er=maybe", "er"), ("hyper.bogus=1", "bogus"), ("progress='no'", "progress"),
        ("progress=maybe", "progress"), ("eval.knn='no'", "eval.knn"), ("steps=abc", "steps"),
        ("steps=nan", "steps"), ("steps=1e3", "steps"), ("batch_size='8'", "batch_size"),
        ("batch_size=no", "batch_size"), ("data.n=-5", "data.n"), ("data.n=0", "data.n"),
        ("optim.weight_decay=nan", "optim.weight_decay"), ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
        ("optim.momentum=1.5", "optim.momentum"), ("seed=-1", "seed"), ("seed=1.5", "seed"),
        ("optim.lrr=0.1", "optim.lrr"), ("foo=1", "foo"), ("data.view_kwargs.bogus=1", "bogus"),
        ("model.kwargs={widths: [0, 16]}", "widths"), ("checkpoint_every=-1", "checkpoint_every"),
        ("log_every=0", "log_every"), ("eval.k=0", "eval.k"), ("data.name=mnist", "data.name"),
        ("optim=3", "optim"), ("accumulate=0", "accumulate"),
    ]
    for i, (override, key) in enumerate(sets):
        pre(f"--set {override}", ["--set", override], (key, key.split(".")[-1]), quick=i % 3 == 0)
    flags = [
        ("--seed 2**70", ["--seed", str(2**70)], ("--seed", "seed"), False),
        ("--seed -1", ["--seed", "-1"], ("--seed", "seed"), False),
        ("--size 0", ["--size", "0"], ("--size", "size", "data.size"), False),
        ("--size -1", ["--size", "-1"], ("--size", "size", "data.size"), False),
        ("--size abc", ["--size", "abc"], ("--size",), False),
        ("--steps 0", ["--steps", "0"], ("--steps", "steps"), False),
        ("--steps -3", ["--steps", "-3"], ("--steps", "steps"), False),
        ("--batch-size 0", ["--batch-size", "0"], ("--batch-size", "batch_size"), False),
        ("--num-workers -1", ["--num-workers", "-1"], ("--num-workers", "num_workers"), False),
        ("--accumulate 0", ["--accumulate", "0"], ("--accumulate", "accumulate"), False),
        ("--stop-after 0", ["--stop-after", "0"], ("--stop-after",), False),
        ("--method nope", ["--method", "nope"], ("--method", "method"), True),
        ("--backbone nope", ["--backbone", "nope"], ("--backbone", "backbone", "model.backbone"), False),
        ("--data imagefolder with a missing root", ["--data", "imagefolder", "--set", "data.root=/nonexistent/fuzz"],
         ("data.root", "/nonexistent/fuzz"), False),
        ("--config /nonexistent.yaml", ["--config", "/nonexistent/fuzz.yaml"], ("/nonexistent/fuzz.yaml",), True),
    ]
    for label, extra, expect, quick in flags:
        pre(label, extra, expect, quick=quick)
    pre("--size 10**6", ["--size", str(10**6)], ("--size", "size", "data.size"), quick=False, sub=True,
        timeout=60.0)
    pre("--out ''", ["--out", ""], ("--out", "out"), out=False, quick=True)

    def out_is_file():
        f = wd.fresh("out-file") / "a-file"
        f.write_text("x")
        return cli_inprocess(["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--steps", "1", "--out", str(f)])
    cases.append(Case("cli", "pretrain --out an existing file", out_is_file, ("--out", "out", "a-file")))

    def pretrain_no_method():
        return cli_inprocess(["pretrain", "--steps", "1"])
    cases.append(Case("cli", "pretrain without --method", pretrain_no_method, ("--method", "method")))

    # config files
    def config_case(label: str, text: str | bytes, expect: tuple[str, ...], *, sub=False, quick=True,
                    timeout=30.0, print_config=False):
        def call():
            path = wd.fresh(label) / "cfg.yaml"
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(text)
            argv = ["pretrain", "--config", str(path)]
            if print_config:
                argv.append("--print-config")
            else:
                argv += ["--method", "simclr", *TINY, *NO_EVAL, "--steps", "1", "--out", str(path.parent / "run")]
            return cli_subprocess(argv, timeout=timeout, memory_gb=4.0) if sub else cli_inprocess(argv)
        cases.append(Case("cli", f"pretrain --config {label}", call, (*expect, "cfg.yaml"), timeout=timeout + 10,
                          quick=quick))

    levels = "\n".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10))
    bomb_unknown = "l0: &l0 [lol]\n" + levels + "\n"
    bomb_hyper = "l0: &l0 [lol]\n" + levels.replace("l9: &l9", "hyper:\n  projector: &l9") + "\n"
    config_case("alias bomb (unknown keys)", bomb_unknown, ("alias", "l0", "l1", "config"), sub=True, quick=False,
                timeout=40.0)
    config_case("alias bomb (in hyper, --print-config)", "l0: &l0 [lol]\n" + levels + "\nhyper: {x: *l9}\n",
                ("alias", "hyper", "config"), sub=True, quick=False, timeout=40.0, print_config=True)
    config_case("alias bomb (hyper.projector)", bomb_hyper, ("alias", "projector", "config"), sub=True,
                quick=False, timeout=40.0)
    config_case("unclosed bracket", "method: [unclosed\n", ("yaml",))
    config_case("a tab for indentation", "optim:\n\tlr: 0.1\n", ("yaml",), quick=False)
    config_case("a list at the top", "- 1\n- 2\n", ("mapping",), quick=False)
    config_case("a scalar", "42\n", ("mapping",), quick=False)
    config_case("not UTF-8", b"method: simclr\noptim: {lr: \xff\xfe}\n", ("utf-8", "decode", "config"), quick=False)
    config_case("duplicate key", "optim: {lr: 0.1}\noptim: {lr: 0.5}\n", ("optim", "duplicate"), quick=False)
    config_case("python tag", "method: !!python/object/apply:os.system ['true']\n", ("yaml", "method"),
                quick=False)

    # numbers that pass the type check but are not finite, or make the run diverge (issue 15, items 4 and 7)
    pre("--set optim.final_lr=.nan", ["--set", "optim.final_lr=.nan"], ("optim.final_lr", "final_lr"))
    pre("--set optim.lr=1.0e+30 (diverges)", ["--set", "optim.lr=1.0e+30", "--steps", "4"], ("optim.lr",),
        quick=False)

    # on-disk data sets (issue 15, items 2, 3 and 8): an ImageFolder under <case>/imgs/{train,val}
    def imagefolder(label: str, prepare: Callable[[Path], Any], expect: tuple[str, ...], *, quick=False,
                    evaluate=False, report=False):
        def call():
            root = wd.fresh(label) / "imgs"
            with prepare(root):
                argv = ["pretrain", "--method", "simclr", "--data", "imagefolder", "--size", "16", "--backbone",
                        "convnet", "--steps", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress",
                        "--device", "cpu", "--set", "model.kwargs={widths: [8, 16]}",
                        "--set", "hyper.projector={hidden: 16, out: 8}", "--set", f"data.root={root}",
                        "--out", str(root.parent / "run"),
                        *(["--set", "eval.knn=true", "--set", "eval.linear=false"] if evaluate else NO_EVAL)]
                if not report:
                    return cli_inprocess(argv)
                import warnings

                from mvssl_core.data import DataWarning

                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DataWarning)
                    res = cli_inprocess(argv)
                return Reported(res.code, res.stderr,
                                [str(w.message) for w in caught if issubclass(w.category, DataWarning)])
        cases.append(Case("cli", f"pretrain --data imagefolder: {label}", call, expect, timeout=60.0, quick=quick))

    classes = ("bird", "cat", "dog")
    imagefolder("val/ lacks train/'s class cat (shifted labels)",
                lambda r: _image_split(r / "train", classes, val=(r / "val", ("bird", "dog"))), ("cat",),
                evaluate=True, quick=True)
    imagefolder("val/ has a class train/ lacks",
                lambda r: _image_split(r / "train", ("bird", "dog"), val=(r / "val", classes)), ("cat",),
                evaluate=True)
    imagefolder("one class folder unreadable (dog/)",
                lambda r: _image_split(r / "train", classes, block_folders=[r / "train" / "dog"]),
                ("imgs/train/dog",), report=True, quick=True)
    imagefolder("train/ unreadable",
                lambda r: _image_split(r / "train", classes, block_folders=[r / "train"]), ("imgs/train",),
                quick=True)
    imagefolder("every class folder unreadable",
                lambda r: _image_split(r / "train", classes, block_folders=[r / "train" / c for c in classes]),
                ("imgs/train",))
    imagefolder("every image unreadable (permission)",
                lambda r: _image_split(r / "train", classes, block_files="all"), ("imgs/train",), quick=True)
    imagefolder("every image zero bytes", lambda r: _image_split(r / "train", classes, content=b""),
                ("imgs/train",))
    imagefolder("every image not a JPEG", lambda r: _image_split(r / "train", classes, content=b"not a jpeg"),
                ("imgs/train",))
    imagefolder("train/ is a file", lambda r: _image_split(r / "train", (), content=b"x"), ("imgs/train",))
    imagefolder("train/ has no class folder", lambda r: _image_split(r / "train", ()), ("imgs/train",))

    # evaluate / linear-eval flags (on a copy of the finished tiny run)
    def le(label: str, extra: list[str], expect: tuple[str, ...], quick=False):
        def call():
            run = wd.copy(wd.finished(), label)
            return cli_inprocess(["linear-eval", str(run), "--quiet", "--device", "cpu", "--batch-size", "8",
                                  *extra])
        cases.append(Case("cli", f"linear-eval {label}", call, expect, timeout=60.0, quick=quick))

    le("--epochs 0", ["--epochs", "0"], ("--epochs", "epochs"), quick=True)
    le("--epochs -1", ["--epochs", "-1"], ("--epochs", "epochs"))
    le("--lr -0.1", ["--lr", "-0.1"], ("--lr", "lr"), quick=True)
    le("--lr nan", ["--lr", "nan"], ("--lr", "lr"))
    le("--lr inf", ["--lr", "inf"], ("--lr", "lr"))
    le("--batch-size 0", ["--batch-size", "0"], ("--batch-size", "batch_size"))
    le("--batch-size -8", ["--batch-size", "-8"], ("--batch-size", "batch_size"))
    le("--set num_workers=-2", ["--set", "num_workers=-2"], ("num_workers",))
    le("--set bogus=1", ["--set", "bogus=1"], ("bogus",))

    def le_missing():
        return cli_inprocess(["linear-eval", "/nonexistent/fuzz-run", "--quiet"])
    cases.append(Case("cli", "linear-eval a nonexistent folder", le_missing, ("/nonexistent/fuzz-run",)))

    def ev(label: str, argv: Callable[[], list[str]], expect: tuple[str, ...], quick=False):
        def call():
            return cli_inprocess(["evaluate", "--device", "cpu", *argv()])
        cases.append(Case("cli", f"evaluate {label}", call, expect, timeout=60.0, quick=quick))

    ev("--checkpoint nonexistent", lambda: ["--checkpoint", "/nonexistent/fuzz.pt"], ("/nonexistent/fuzz.pt",),
       quick=True)
    ev("--checkpoint a folder", lambda: ["--checkpoint", str(wd.finished())], ("base-finished",))
    ev("--size 0", lambda: ["--checkpoint", str(wd.finished() / "checkpoint.pt"), "--size", "0"],
       ("--size", "size", "data.size"))
    ev("--data nope", lambda: ["--checkpoint", str(wd.finished() / "checkpoint.pt"), "--data", "nope"],
       ("--data", "data.name"))
    ev("--set eval.k=-1", lambda: ["--checkpoint", str(wd.finished() / "checkpoint.pt"), "--set", "eval.k=-1"],
       ("eval.k",))
    ev("--results ''", lambda: ["--checkpoint", str(wd.finished() / "checkpoint.pt"), "--results", ""],
       ("--results", "results"))
    return cases


def _write_images(folder: Path, n: int, content: bytes | None, seed: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i}.jpg"
        if content is None:
            pixels = np.random.default_rng(seed + i).integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, "JPEG")
        else:
            path.write_bytes(content)


@contextlib.contextmanager
def _image_split(train: Path, classes: tuple[str, ...], *, n: int = 3, content: bytes | None = None,
                 val: tuple[Path, tuple[str, ...]] | None = None, block_folders: list[Path] = (),
                 block_files: str = ""):
    """``train/<class>/<i>.jpg`` (and ``val/...``), with folders and files made unreadable while the
    block lasts. We may run as root, for whom no permission bit denies anything: ``os.scandir`` (what
    ``os.walk`` lists with) and ``open`` raise ``PermissionError`` for the chosen paths instead."""
    import builtins
    import errno

    if not classes and content is not None:  # train/ is a file
        train.parent.mkdir(parents=True, exist_ok=True)
        train.write_bytes(content)
    else:
        train.mkdir(parents=True, exist_ok=True)
    for c, cls in enumerate(classes):
        _write_images(train / cls, n, content, 10 * c)
    if val is not None:
        for c, cls in enumerate(val[1]):
            _write_images(val[0] / cls, n, content, 100 + 10 * c)
    folders = {os.path.normpath(p) for p in block_folders}
    files = {os.path.normpath(p) for p in train.glob("*/*.jpg")} if block_files == "all" else set()
    real_scandir, real_open = os.scandir, builtins.open

    def scandir(path="."):
        if os.path.normpath(os.fspath(path)) in folders:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.normpath(os.fspath(file)) in files:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    os.scandir, builtins.open = scandir, fake_open
    try:
        yield train
    finally:
        os.scandir, builtins.open = real_scandir, real_open


# ------------------------------------------------------------------------------------------------
# group 3: run folders


def _same_content(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        if a.is_floating_point() or a.is_complex():  # NaN equals NaN here (an unset Gaussian state is NaN)
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same_content(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_content(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _flip_byte(path: Path, fraction: float) -> None:
    """Flip the byte at ``fraction`` of the file, or the first byte after it whose flip changes what
    ``torch.load`` returns (or makes it fail): some bytes (a pickle memo index, zip padding) can change
    without changing the content, and a checkpoint that loads the same content is not a bad input."""
    import torch

    original = path.read_bytes()
    before = torch.load(path, map_location="cpu", weights_only=True)
    for i in range(min(len(original) - 1, int(len(original) * fraction)), len(original)):
        data = bytearray(original)
        data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            after = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (unreadable: a real corruption)
            return
        if not _same_content(before, after):
            return
    raise RuntimeError(f"no byte at or after {fraction:.1%} of {path} changes its content")


def _edit_checkpoint(path: Path, edit: Callable[[dict], None], rehash: bool = True) -> None:
    """Edit a checkpoint's content; ``rehash``: write it with a content hash that matches the edit (as a
    buggy writer or a deliberate edit would), so that the check of the edited field itself is what answers,
    not the hash check (which the cases without ``rehash`` exercise)."""
    import torch

    from mvssl_core.runstate import save_checkpoint

    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    if rehash and state.get("format") == "mvssl-checkpoint/2":
        save_checkpoint(path, state)
    else:
        torch.save(state, path)


def _with_lr(config: dict, lr: float) -> dict:
    config["optim"]["lr"] = lr
    return config


def _edit_yaml_lr(path: Path) -> None:
    text = path.read_text()
    edited = re.sub(r"(?m)^(  lr: )\S+$", r"\g<1>0.7", text, count=1)
    if edited == text:
        raise RuntimeError(f"no optim lr line in {path}")
    path.write_text(edited)


def run_folder_cases(wd: Workdir) -> list[Case]:
    cases: list[Case] = []
    ckpt_expect = ("checkpoint.pt", "checkpoint")

    def resume(run: Path) -> CliResult:
        return cli_inprocess(["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--steps", "4",
                              "--set", "checkpoint_every=1", "--out", str(run), "--resume"])

    def evaluate(run: Path) -> CliResult:
        return cli_inprocess(["evaluate", "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu"])

    def linear(run: Path) -> CliResult:
        return cli_inprocess(["linear-eval", str(run), "--quiet", "--device", "cpu", "--batch-size", "8",
                              "--epochs", "1"])

    commands = {"resume": (resume, "stopped"), "evaluate": (evaluate, "finished"), "linear-eval": (linear, "finished")}

    def add(label: str, corrupt: Callable[[Path], None], expect: tuple[str, ...], which=tuple(commands), quick=False):
        for cmd in which:
            fn, base = commands[cmd]

            def call(_fn=fn, _base=base, _cmd=cmd):
                run = wd.copy(wd.stopped() if _base == "stopped" else wd.finished(), f"{label}-{_cmd}")
                corrupt(run)
                return _fn(run)
            cases.append(Case("run_folders", f"{cmd}: {label}", call, expect, timeout=90.0,
                              quick=quick and cmd == which[0]))

    add("checkpoint.pt zero bytes", lambda r: (r / "checkpoint.pt").write_bytes(b""), ckpt_expect, quick=True)
    add("checkpoint.pt truncated to half",
        lambda r: (r / "checkpoint.pt").write_bytes((r / "checkpoint.pt").read_bytes()[: (r / "checkpoint.pt").stat().st_size // 2]),
        ckpt_expect)
    for frac in (0.02, 0.5, 0.9, 0.995):
        add(f"checkpoint.pt byte flipped at {frac:.1%}", lambda r, f=frac: _flip_byte(r / "checkpoint.pt", f),
            ckpt_expect, quick=frac == 0.5)
    add("checkpoint.pt is a text file", lambda r: (r / "checkpoint.pt").write_text("hello"), ckpt_expect)
    add("checkpoint step beyond the run's end",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(step=10**6)), ("step",),
        which=("resume", "linear-eval"), quick=True)
    add("checkpoint step edited, hash not updated",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(step=3), rehash=False), ckpt_expect,
        which=("resume", "evaluate"), quick=True)
    add("checkpoint results_file relative (where linear-eval would write)",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(
            config=s["config"].replace('"results_file": null', '"results_file": "fuzz-elsewhere.json"'))),
        ("results_file",), which=("linear-eval", "resume"), quick=True)

    def results_file_of_another_run(r: Path) -> None:
        other = r.parent / "other-run.json"
        record = json.loads((r / "results.json").read_text())  # a valid record of another run: seed 99
        record["seed"] = record["config"]["seed"] = 99
        other.write_text(json.dumps(record))
        _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(
            config=s["config"].replace('"results_file": null', f'"results_file": {json.dumps(str(other))}')))
    add("checkpoint results_file outside the run folder holding another run's record", results_file_of_another_run,
        ("results_file",), which=("linear-eval",))
    add("checkpoint step negative", lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(step=-1)),
        ("step",), which=("resume", "evaluate"))
    add("checkpoint step a string", lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(step="3")),
        ("step",), which=("resume", "evaluate"))
    add("checkpoint config not JSON",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(config="{not json")), ("config",),
        which=("resume", "evaluate"))
    add("checkpoint config with lr NaN",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(
            config=json.dumps(_with_lr(json.loads(s["config"]), float("nan"))))), ("lr", "optim.lr"),
        which=("resume", "evaluate"))
    add("checkpoint without model weights", lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.pop("model")),
        ("model",), which=("resume", "evaluate"))
    add("checkpoint weights of another shape",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s["model"].update(
            {k: v[:1] for k, v in list(s["model"].items())[:1]})), ("model", "backbone", "checkpoint"),
        which=("resume", "evaluate"))
    add("checkpoint weights NaN",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: [v.fill_(float("nan")) for v in s["model"].values()
                                                                   if v.is_floating_point()]),
        ("model", "nan", "non-finite", "checkpoint"), which=("resume", "evaluate"))
    add("checkpoint format tag wrong",
        lambda r: _edit_checkpoint(r / "checkpoint.pt", lambda s: s.update(format="other/9")), ("format",),
        which=("evaluate",))
    add("checkpoint.pt missing", lambda r: (r / "checkpoint.pt").unlink(), ckpt_expect, quick=True)

    def log_edit(fn: Callable[[list[str]], list[str]]):
        def corrupt(run: Path):
            p = run / "metrics.jsonl"
            lines = p.read_text().splitlines()
            p.write_text("".join(ln + "\n" for ln in fn(lines)))
        return corrupt

    log_expect = ("metrics.jsonl",)
    add("metrics.jsonl line '42'", log_edit(lambda ls: [ls[0], "42", *ls[1:]]), log_expect, which=("resume",),
        quick=True)
    add("metrics.jsonl line '{\"step\": \"x\"}'", log_edit(lambda ls: [ls[0], '{"step": "x"}', *ls[1:]]),
        log_expect, which=("resume",), quick=True)
    add("metrics.jsonl line '[1, 2]'", log_edit(lambda ls: [ls[0], "[1, 2]", *ls[1:]]), log_expect,
        which=("resume",))
    add("metrics.jsonl line without step", log_edit(lambda ls: [ls[0], '{"loss": 1.0}', *ls[1:]]), log_expect,
        which=("resume",))
    add("metrics.jsonl garbage line", log_edit(lambda ls: [ls[0], "{not json", *ls[1:]]), log_expect,
        which=("resume",))
    add("metrics.jsonl a line missing (step 1)", log_edit(lambda ls: ls[1:]), log_expect, which=("resume",))
    add("metrics.jsonl a line duplicated", log_edit(lambda ls: [ls[0], *ls]), log_expect, which=("resume",))
    add("metrics.jsonl steps out of order", log_edit(lambda ls: ls[::-1]), log_expect, which=("resume",))
    add("metrics.jsonl a line of step 99 (the run has 4)",
        log_edit(lambda ls: [*ls, json.dumps({**json.loads(ls[-1]), "step": 99})]), log_expect, which=("resume",))
    add("metrics.jsonl a NaN literal", log_edit(lambda ls: [ls[0].replace('"loss": ', '"loss": NaN, "x": '), *ls[1:]]),
        log_expect, which=("resume",))
    add("metrics.jsonl missing", lambda r: (r / "metrics.jsonl").unlink(), log_expect, which=("resume",))
    add("results.json malformed", lambda r: (r / "results.json").write_text("{"), ("results.json",),
        which=("linear-eval",), quick=True)
    add("results.json empty", lambda r: (r / "results.json").write_text(""), ("results.json",),
        which=("linear-eval",))
    add("results.json missing", lambda r: (r / "results.json").unlink(), ("results.json",), which=("linear-eval",))
    add("config.yaml edited (lr changed)",
        lambda r: _edit_yaml_lr(r / "config.yaml"),
        ("config.yaml", "lr"), which=("resume",))

    # a second run on a finished run's folder, without --resume
    def second_on_finished():
        run = wd.copy(wd.finished(), "second-on-finished")
        return cli_inprocess(["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--out", str(run)])
    cases.append(Case("run_folders", "pretrain (no --resume) on a finished run's --out", second_on_finished,
                      ("--out", "out", "--resume", "run"), timeout=60.0, quick=True))

    def resume_other_method():
        run = wd.copy(wd.stopped(), "resume-other-method")
        return cli_inprocess(["pretrain", "--method", "byol", *TINY, *NO_EVAL, "--steps", "4", "--out", str(run),
                              "--resume"])
    cases.append(Case("run_folders", "resume: with another --method", resume_other_method, ("method",),
                      timeout=60.0, quick=False))

    def resume_fewer_steps():
        run = wd.copy(wd.stopped(), "resume-fewer-steps")
        return cli_inprocess(["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--steps", "1", "--out", str(run),
                              "--resume"])
    cases.append(Case("run_folders", "resume: --steps below the checkpoint's step", resume_fewer_steps, ("steps",),
                      timeout=60.0, quick=False))

    # two writers: a child trains on --out (slowly) while this process starts a second run there
    def two_writers(resume_flag: bool):
        def call():
            run = wd.fresh("two-writers") / "run"
            argv = ["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--steps", "400", "--set",
                    "checkpoint_every=1", "--out", str(run)]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            child = subprocess.Popen([sys.executable, "-m", "mvssl_core", *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env, cwd=str(REPO))
            try:
                deadline = time.time() + 60
                while not (run / "checkpoint.pt").is_file() and time.time() < deadline and child.poll() is None:
                    time.sleep(0.1)
                if child.poll() is not None:
                    raise RuntimeError("the first writer ended before the second started")
                second = ["pretrain", "--method", "simclr", *TINY, *NO_EVAL, "--steps", "2", "--out", str(run)]
                return cli_inprocess(second + (["--resume"] if resume_flag else []))
            finally:
                child.kill()
                child.wait()
        return call
    cases.append(Case("run_folders", "a second writer on --out while the first runs", two_writers(False),
                      ("--out", "out", "lock", "run"), timeout=90.0, quick=False))
    cases.append(Case("run_folders", "a second writer --resume on --out while the first runs", two_writers(True),
                      ("--out", "out", "lock", "run"), timeout=90.0, quick=False))
    return cases


# ------------------------------------------------------------------------------------------------
# group 4: results files

SSL_FILES = ("results/ssl/shapes.json", "results/ssl/ablation.json", "results/ssl/choices.json")
OTHER_FILES = ("results/critics.json", "results/mi_not_enough.json")


def _dup_key(text: str, key: str, value: str) -> str:
    """Insert a second ``"key": value`` before the first occurrence of ``"key":``."""
    i = text.index(f'"{key}":')
    return text[:i] + f'"{key}": {value}, ' + text[i:]


def _replace_value(text: str, key: str, new: str) -> str:
    """Replace the first number after ``"key":`` with ``new`` (text-level: literals json.dumps cannot write);
    where ``key`` holds an object (``"log_k": {"64": 4.15, ...}``), its first number."""
    m = re.search(rf'"{re.escape(key)}":\s*(?:\{{\s*"[^"]*":\s*)?(-?[0-9.eE+-]+)', text)
    if m is None:
        raise KeyError(key)
    return text[: m.start(1)] + new + text[m.end(1):]


def results_cases(wd: Workdir) -> list[Case]:
    from mvssl_core.experiments import load_experiment
    from mvssl_core.results import load_results

    cases: list[Case] = []
    cache: dict[str, str] = {}

    def text_of(rel: str) -> str:
        if rel not in cache:
            cache[rel] = (REPO / rel).read_text(encoding="utf-8")
        return cache[rel]

    def add(rel: str, label: str, mutate: Callable[[Any], Any], expect: tuple[str, ...], *, text_level=False,
            quick=False):
        loader = load_experiment if rel.startswith("results/ssl/") else load_results

        def call():
            dest = wd.fresh(f"{Path(rel).stem}-{label}") / Path(rel).name
            if text_level:
                out = mutate(text_of(rel))
                dest.write_bytes(out) if isinstance(out, bytes) else dest.write_text(out, encoding="utf-8")
            else:
                record = json.loads(text_of(rel))
                mutate(record)
                dest.write_text(json.dumps(record), encoding="utf-8")
            return loader(dest)
        cases.append(Case("results_files", f"{rel}: {label}", call, expect, timeout=30.0, quick=quick))

    def run0(r):
        return r["metrics"]["runs"][0]

    def setf(path: list, value):
        def mutate(r):
            obj = r
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value
        return mutate

    for fi, rel in enumerate(SSL_FILES):
        q = fi == 0
        R = ["metrics", "runs", 0]
        add(rel, "a run duplicated", lambda r: r["metrics"]["runs"].append(copy.deepcopy(run0(r))),
            ("duplicate", "simclr/s0", "name"), quick=q)
        add(rel, "final.linear_top1 = 7.5", setf(R + ["final", "linear_top1"], 7.5), ("linear_top1",), quick=q)
        add(rel, "final.linear_top1 = -0.3", setf(R + ["final", "linear_top1"], -0.3), ("linear_top1",), quick=q)
        add(rel, 'final.linear_top1 = "0.9"', setf(R + ["final", "linear_top1"], "0.9"), ("linear_top1",), quick=q)
        add(rel, "final.knn_top1 = 7.5", setf(R + ["final", "knn_top1"], 7.5), ("knn_top1",))
        add(rel, "final.linear_top1 = true", setf(R + ["final", "linear_top1"], True), ("linear_top1",))
        add(rel, "random_init[0].knn_top1 = 7.5", setf(["metrics", "random_init", 0, "knn_top1"], 7.5),
            ("knn_top1", "random_init"))
        add(rel, "run seed differs from its name's /sN", lambda r: run0(r).update(seed=run0(r)["seed"] + 5),
            ("seed",), quick=q)
        add(rel, "history.step negative", lambda r: run0(r)["history"]["step"].__setitem__(0, -3), ("step",),
            quick=q)
        add(rel, "history.step not increasing", lambda r: run0(r)["history"]["step"].reverse(), ("step",), quick=q)
        add(rel, "history.step repeated", lambda r: run0(r)["history"]["step"].__setitem__(1, run0(r)["history"]["step"][0]),
            ("step",))
        add(rel, "history.step beyond run steps", lambda r: run0(r)["history"]["step"].__setitem__(-1, 10**9),
            ("step", "steps"))
        add(rel, "history.step a float", lambda r: run0(r)["history"]["step"].__setitem__(0, 1.5), ("step",))
        add(rel, "history.loss holds a string", lambda r: run0(r)["history"]["loss"].__setitem__(0, "x"),
            ("loss",))
        add(rel, "history empty lists", lambda r: run0(r).update(history={"step": [], "loss": []}),
            ("history", "step"))
        add(rel, "unknown method", lambda r: run0(r).update(method="mocov9"), ("method", "mocov9"), quick=q)
        add(rel, "unknown family", lambda r: run0(r).update(family="mocov9"), ("family", "mocov9"))
        add(rel, "method/family mismatch", lambda r: run0(r).update(family="dino" if run0(r)["family"] != "dino" else "byol"),
            ("family", "method"))
        add(rel, "missing field 'final'", lambda r: run0(r).pop("final"), ("final",), quick=q)
        add(rel, "missing final.linear_top1", lambda r: run0(r)["final"].pop("linear_top1"), ("linear_top1",))
        add(rel, "missing field 'seed'", lambda r: run0(r).pop("seed"), ("seed",))
        add(rel, "batch_size = 0", setf(R + ["batch_size"], 0), ("batch_size",))
        add(rel, "epochs = -1", setf(R + ["epochs"], -1), ("epochs",))
        add(rel, "steps = 0", setf(R + ["steps"], 0), ("steps",))
        add(rel, "top-level seed a string", setf(["seed"], "0"), ("seed",))
        add(rel, "schema version other", setf(["schema"], "mvssl-results/99"), ("schema",))
        add(rel, "provenance.date garbage", setf(["provenance", "date"], "yesterday"), ("date", "provenance.date"))
        add(rel, "runs empty", setf(["metrics", "runs"], []), ("runs",))
        add(rel, "linear_top1 literal 1e999", lambda t: _replace_value(t, "linear_top1", "1e999"), ("linear_top1",),
            text_level=True, quick=q)
        add(rel, "linear_top1 literal -1e999", lambda t: _replace_value(t, "linear_top1", "-1e999"),
            ("linear_top1",), text_level=True)
        add(rel, "linear_top1 literal NaN", lambda t: _replace_value(t, "linear_top1", "NaN"), ("linear_top1", "NaN"),
            text_level=True, quick=q)
        add(rel, "linear_top1 literal Infinity", lambda t: _replace_value(t, "linear_top1", "Infinity"),
            ("linear_top1", "Infinity"), text_level=True)
        add(rel, "duplicate key 'seed' (its first occurrence)", lambda t: _dup_key(t, "seed", "99"), ("seed", "duplicate"),
            text_level=True, quick=q)
        add(rel, "duplicate top-level key 'method'", lambda t: t.replace("{", '{"method": "other", ', 1),
            ("method", "duplicate"), text_level=True)
        add(rel, "truncated to half", lambda t: t[: len(t) // 2], (Path(rel).name,), text_level=True)
        add(rel, "empty file", lambda t: "", (Path(rel).name,), text_level=True)
        add(rel, "not UTF-8", lambda t: t.encode()[:100] + b"\xff\xfe" + t.encode()[100:], (Path(rel).name,),
            text_level=True)
        add(rel, "a JSON list, not an object", lambda t: "[" + t + "]", (Path(rel).name, "object"), text_level=True)

    for fi, rel in enumerate(OTHER_FILES):
        q = True
        R = ["metrics", "runs", 0]
        add(rel, "a run duplicated", lambda r: r["metrics"]["runs"].append(copy.deepcopy(run0(r))),
            ("duplicate", "name", "runs"), quick=q)
        if rel.endswith("mi_not_enough.json"):  # critics' names hold no seed
            add(rel, "run seed differs from its name", lambda r: run0(r).update(seed=run0(r)["seed"] + 5), ("seed",))
        add(rel, "missing run field 'name'", lambda r: run0(r).pop("name"), ("name",))
        add(rel, "unknown objective", lambda r: run0(r).update(objective="mocov9"), ("objective", "mocov9"), quick=q)
        add(rel, "runs not a list", setf(["metrics", "runs"], {"a": 1}), ("runs",))
        add(rel, "log_k a string", setf(["metrics", "log_k"], "4.8"), ("log_k",))
        add(rel, "log_k literal 1e999", lambda t: _replace_value(t, "log_k", "1e999"), ("log_k",), text_level=True,
            quick=q)
        add(rel, "log_k literal NaN", lambda t: _replace_value(t, "log_k", "NaN"), ("log_k", "NaN"), text_level=True)
        add(rel, "duplicate key 'seed' in a run",
            lambda t: t.replace('"seed": 0', '"seed": 0, "seed": 7', 1), ("seed", "duplicate"), text_level=True)
        add(rel, "missing field 'metrics'", lambda r: r.pop("metrics"), ("metrics",))
        if rel.endswith("critics.json"):
            add(rel, "step negative", lambda r: run0(r)["step"].__setitem__(0, -10), ("step",), quick=q)
            add(rel, "step not increasing", lambda r: run0(r)["step"].reverse(), ("step",))
            add(rel, "estimate shorter than step", lambda r: run0(r)["estimate"].pop(), ("estimate", "step"))
            add(rel, "estimate holds a string", lambda r: run0(r)["estimate"].__setitem__(0, "x"), ("estimate",))
            add(rel, "true_mi negative", lambda r: run0(r)["true_mi"].__setitem__(0, -2.0), ("true_mi",))
            add(rel, "batch_size = 0", setf(R + ["batch_size"], 0), ("batch_size",))
            add(rel, "unknown critic", lambda r: run0(r).update(critic="mocov9"), ("critic", "mocov9"))
            add(rel, "missing 'estimate'", lambda r: run0(r).pop("estimate"), ("estimate",))
        else:
            add(rel, "raw_pixels.probe_test_top1 = 7.5", setf(["metrics", "raw_pixels", "probe_test_top1"], 7.5),
                ("probe_test_top1",), quick=q)
            add(rel, "raw_pixels.probe_test_top1 = -0.3", setf(["metrics", "raw_pixels", "probe_test_top1"], -0.3),
                ("probe_test_top1",))
            add(rel, "n_train = -1", setf(["metrics", "n_train"], -1), ("n_train",))
            add(rel, "curve.step not increasing", lambda r: run0(r)["curve"]["step"].reverse(), ("step",))
            add(rel, "curve.step negative", lambda r: run0(r)["curve"]["step"].__setitem__(0, -100), ("step",))
            add(rel, "curve lists of unequal length", lambda r: run0(r)["curve"]["step"].pop(), ("curve", "step"))
            add(rel, "missing 'curve'", lambda r: run0(r).pop("curve"), ("curve",))
    return cases


# ------------------------------------------------------------------------------------------------
# driver


def build_cases(groups: tuple[str, ...], wd: Workdir, notes: list[str]) -> list[Case]:
    cases: list[Case] = []
    if "functions" in groups:
        fc, broken = function_cases()
        notes += broken
        cases += fc
    if "cli" in groups:
        cases += cli_cases(wd)
    if "run_folders" in groups:
        cases += run_folder_cases(wd)
    if "results_files" in groups:
        cases += results_cases(wd)
    return cases


def tally(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    out = {}
    for g in GROUPS:
        rows = [o for o in outcomes if o.group == g]
        if rows:
            out[g] = {"tried": len(rows), **{k: sum(o.outcome == k for o in rows) for k in OUTCOMES}}
    return out


def format_table(t: dict[str, dict[str, int]]) -> str:
    head = f"{'group':<15}{'tried':>7}{'clear':>7}{'silent':>8}{'unclear':>9}{'by_design':>11}"
    lines = [head, "-" * len(head)]
    total = {"tried": 0, **{k: 0 for k in OUTCOMES}}

    def line(g: str, row: dict[str, int]) -> str:
        return f"{g:<15}{row['tried']:>7}{row['clear']:>7}{row['silent']:>8}{row['unclear']:>9}{row['by_design']:>11}"

    for g, row in t.items():
        lines.append(line(g, row))
        for k in total:
            total[k] += row[k]
    lines.append("-" * len(head))
    lines.append(line("total", total))
    return "\n".join(lines)


def run(groups: tuple[str, ...] = GROUPS, quick: bool = False, only: str | None = None,
        log: Callable[[str], None] | None = None) -> tuple[list[Outcome], list[str]]:
    """Run the cases; returns the outcomes and notes (harness problems, e.g. a valid call that failed)."""
    import torch

    torch.set_num_threads(1)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mvssl-fuzz-") as tmp:
        wd = Workdir(tmp)
        cases = build_cases(groups, wd, notes)
        if quick:
            cases = [c for c in cases if c.quick]
        if only:
            cases = [c for c in cases if re.search(only, c.name)]
        outcomes = []
        cwd = os.getcwd()
        for case in cases:
            try:
                o = run_case(case, tmp)
            finally:
                os.chdir(cwd)
            outcomes.append(o)
            if log:
                log(f"{o.outcome:<9} {o.group:<14} {o.name}  [{o.detail}]")
    return outcomes, notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a fixed subset of the cases (well under a minute)")
    p.add_argument("--list", action="store_true", help="print every case with its outcome")
    p.add_argument("--json", metavar="PATH", help="write the tally and every case's outcome here")
    p.add_argument("--group", action="append", choices=GROUPS, help="only these groups (repeatable)")
    p.add_argument("--only", metavar="REGEX", help="only the cases whose name matches")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a case is silent or unclear, or a valid call of the harness fails "
                        "(by_design cases do not fail; without it the exit status is 0: the script reports)")
    args = p.parse_args(argv)
    groups = tuple(args.group) if args.group else GROUPS
    start = time.perf_counter()
    warnings_ctx = __import__("warnings").catch_warnings()
    with warnings_ctx:
        __import__("warnings").simplefilter("ignore")
        outcomes, notes = run(groups, quick=args.quick, only=args.only)
    seconds = time.perf_counter() - start
    if args.list:
        for o in outcomes:
            print(f"{o.outcome:<9} {o.group:<14} {o.name}  [{o.detail}]")
        print()
    t = tally(outcomes)
    for g, row in t.items():
        print(f"{g}: {row['tried']} tried, {row['clear']} clear errors, {row['silent']} silent, "
              f"{row['unclear']} unclear, {row['by_design']} by design")
    print()
    print(format_table(t))
    print(f"\n{'quick' if args.quick else 'full'} mode, {seconds:.0f} s")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "mode": "quick" if args.quick else "full", "seconds": round(seconds, 1), "tally": t, "notes": notes,
            "cases": [{"group": o.group, "name": o.name, "outcome": o.outcome, "detail": o.detail} for o in outcomes],
        }, indent=1) + "\n")
    if args.strict and (notes or any(o.outcome in ("silent", "unclear") for o in outcomes)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
