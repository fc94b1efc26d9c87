"""Is maximising mutual information enough? Bijective encoders of two image halves, trained on an MI estimate,
with the linear-probe accuracy of their representation recorded beside the estimate (Tschannen et al., ICLR 2020).

Run through its entry point, ``scripts/experiments/mi_not_enough.py`` (the command recorded in the file):
    python scripts/experiments/mi_not_enough.py                              # ~5 min on 2 cores -> results/mi_not_enough.json
    python scripts/experiments/mi_not_enough.py --smoke --out /tmp/m.json    # seconds; run by tests/test_experiments.py

Setting. Views: the top and bottom halves (4 x 8 = 32 pixels each) of scikit-learn's 8 x 8 digits
(``mvssl_core.data.Digits``, its fixed 80/20 split), dequantised with uniform noise of one grey level and
standardised per pixel with the training set's statistics. Encoders: one :class:`mvssl_core.flows.Flow`
per half, g1 and g2, bijections of R^32 that start as the identity. Because they are bijections,
I(g1(X1); g2(X2)) = I(X1; X2) at every step of training: the true mutual information never changes.

Objectives (each with ``--seeds`` seeds):

- ``infonce/bilinear``: maximise InfoNCE (``mvssl_core.bounds.infonce``) with the bilinear critic
  f(a, b) = a^T W b (W learned) on the flows' outputs, as in Tschannen et al.;
- ``infonce/mlp``: the same with a separable MLP critic f(a, b) = g(a)^T h(b) (another inductive bias; the
  critics are those of ``mvssl_core.critics``);
- ``adversarial/bilinear``: maximise InfoNCE while a linear classifier on g1(X1), trained alongside on the
  labels, is fought by the encoder: the encoder's loss is ``-InfoNCE - lambda * min(CE, log 10)`` (it raises
  the classifier's cross-entropy up to that of a uniform guess), the classifier's is ``CE`` on detached features;
- ``supervised``: g1 with a linear head trained on the labels only (cross-entropy): how linearly separable
  this architecture can make the top half.

Every ``eval_every`` steps the script records the InfoNCE estimate of the current encoders and critic on fixed
batches of the training and of the test split (no gradient), and the test accuracy of a fresh logistic-regression
probe (``mvssl_core.evaluate.linear_probe``, sklearn, standardised features) fitted on g1(X1) of the training
split. The raw-pixel probe (the flows at step 0 are the identity) is recorded as the baseline.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import bounds
from mvssl_core.critics import Bilinear, SeparableCritic
from mvssl_core.data import Digits
from mvssl_core.evaluate import linear_probe
from mvssl_core.flows import Flow
from mvssl_core.heads import MLPSpec
from mvssl_core.results import SCHEMA, provenance, repository_root, write_results

DEFAULT_OUT = repository_root(Path(__file__).parent) / "results" / "mi_not_enough.json"  # the checkout's results/
OBJECTIVES = ("infonce/bilinear", "infonce/mlp", "adversarial/bilinear", "supervised")
GREY_LEVELS = 17  # digits pixels take the values 0..16


@dataclass(frozen=True)
class Config:
    """Everything that determines a run (saved in the results file)."""

    steps: int = 2000
    eval_every: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    flow_layers: int = 6
    flow_hidden: int = 64
    critic_hidden: int = 64
    adversarial_weight: float = 1.0
    probe_C: float = 1.0
    std_floor: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2)
    objectives: tuple[str, ...] = OBJECTIVES
    threads: int = 1

    @staticmethod
    def smoke() -> "Config":
        return Config(steps=6, eval_every=3, batch_size=32, flow_layers=2, flow_hidden=8, critic_hidden=8, seeds=(0,))


def grey_levels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels (N, 64) float64 in 0..16, labels (N,)) of the digits of ``split`` (the fixed 80/20 split)."""
    ds = Digits(size=8, split=split, rgb=False)
    return (ds.images.reshape(len(ds), 64).double() * 16 / 255).round(), torch.as_tensor(ds.targets)


class Views:
    """Dequantise and standardise grey levels into the two 32-pixel views (top half, bottom half).

    x = (level + u) / 17 with u ~ U(0, 1), so each pixel has a density on [0, 1); then per-pixel
    standardisation with the training split's mean and std (std floored at ``std_floor``: the border
    pixels of the digits are almost always 0).
    """

    def __init__(self, train_levels: torch.Tensor, std_floor: float) -> None:
        x = (train_levels + 0.5) / GREY_LEVELS
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(std_floor)

    def __call__(self, levels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(levels.shape, generator=generator, dtype=torch.float64)
        x = (((levels + u) / GREY_LEVELS - self.mean) / self.std).float()
        return x[:, :32].contiguous(), x[:, 32:].contiguous()


@torch.no_grad()
def infonce_estimate(g1: Flow, g2: Flow, critic: nn.Module, top: torch.Tensor, bottom: torch.Tensor, k: int) -> float:
    """Mean InfoNCE over the consecutive batches of k pairs of (top, bottom) (the remainder is dropped)."""
    values = []
    for i in range(0, top.shape[0] - k + 1, k):
        values.append(float(bounds.infonce(critic(g1(top[i : i + k])[0], g2(bottom[i : i + k])[0]))))
    return sum(values) / len(values)


@torch.no_grad()
def probe(g1: Flow, train: tuple, test: tuple, C: float) -> dict[str, float]:
    """Logistic-regression probe on g1(top half): train and test top-1."""
    out = linear_probe(g1(train[0])[0], train[2], g1(test[0])[0], test[2], backend="sklearn", C=C)
    return {"probe_train_top1": out["train_top1"], "probe_test_top1": out["test_top1"]}


def run(objective: str, seed: int, cfg: Config, data: dict) -> dict:
    """Train one objective from one seed; returns its curves."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    g1 = Flow(32, n_layers=cfg.flow_layers, hidden=cfg.flow_hidden)
    g2 = Flow(32, n_layers=cfg.flow_layers, hidden=cfg.flow_hidden)
    if objective == "infonce/mlp":  # two one-hidden-layer GELU MLPs
        critic: nn.Module = SeparableCritic(32, MLPSpec(cfg.critic_hidden, 32, layers=2, bn=False, activation="gelu"))
    else:
        critic = Bilinear(32)
    head = nn.Linear(32, 10)
    encoder_params = list(g1.parameters()) + list(g2.parameters()) + list(critic.parameters())
    if objective == "supervised":
        encoder_params = list(g1.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(encoder_params, lr=cfg.lr)
    head_opt = torch.optim.Adam(head.parameters(), lr=cfg.lr) if objective.startswith("adversarial") else None

    train, test, views, levels = data["train"], data["test"], data["views"], data["train_levels"]
    n = levels.shape[0]
    curve: dict[str, list] = {k: [] for k in ("step", "infonce_train", "infonce_test", "probe_train_top1",
                                              "probe_test_top1", "log_det", "head_ce")}
    head_ce = math.nan

    def record(step: int) -> None:
        curve["step"].append(step)
        curve["infonce_train"].append(infonce_estimate(g1, g2, critic, train[0], train[1], cfg.batch_size))
        curve["infonce_test"].append(infonce_estimate(g1, g2, critic, test[0], test[1], cfg.batch_size))
        for key, value in probe(g1, train, test, cfg.probe_C).items():
            curve[key].append(value)
        with torch.no_grad():
            curve["log_det"].append(float(g1(train[0])[1].mean()))
        curve["head_ce"].append(None if math.isnan(head_ce) else head_ce)

    t0 = time.perf_counter()
    record(0)
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        top, bottom = views(levels[idx], gen)  # fresh dequantisation noise for every batch
        y = train[2][idx]
        a = g1(top)[0]
        if objective == "supervised":
            loss = F.cross_entropy(head(a), y)
        else:
            loss = -bounds.infonce(critic(a, g2(bottom)[0]))
            if head_opt is not None:
                ce = F.cross_entropy(head(a), y)
                # raise the classifier's cross-entropy up to that of a uniform guess, log 10, and no further:
                # unbounded, the encoder wins by blowing the features up, which also wrecks the critic
                loss = loss - cfg.adversarial_weight * ce.clamp(max=math.log(10))
                head_ce = float(ce.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if head_opt is not None:  # the classifier's own step, on detached features
            head_opt.zero_grad(set_to_none=True)
            F.cross_entropy(head(a.detach()), y).backward()
            head_opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step)
    return {"name": f"{objective}/s{seed}", "objective": objective, "seed": seed, "curve": curve,
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny flows, a few steps (seconds)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file (default {DEFAULT_OUT})")
    p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, help="run only these objectives")
    args = p.parse_args(argv)
    cfg = Config.smoke() if args.smoke else Config()
    if args.seeds:
        cfg = Config(**{**asdict(cfg), "seeds": tuple(args.seeds)})
    if args.objectives:
        cfg = Config(**{**asdict(cfg), "objectives": tuple(args.objectives)})
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    command = shlex.join(["python", "scripts/experiments/mi_not_enough.py", *(sys.argv[1:] if argv is None else argv)])

    levels, y = grey_levels("train")
    t_levels, t_y = grey_levels("test")
    views = Views(levels, cfg.std_floor)
    fixed = torch.Generator().manual_seed(12345)  # the evaluation's fixed dequantisation noise
    top, bottom = views(levels, fixed)
    t_top, t_bottom = views(t_levels, fixed)
    data = {"train": (top, bottom, y), "test": (t_top, t_bottom, t_y), "views": views, "train_levels": levels}

    t0 = time.perf_counter()
    runs = []
    for objective in cfg.objectives:
        for seed in cfg.seeds:
            runs.append(run(objective, seed, cfg, data))
            r = runs[-1]["curve"]
            print(f"{objective} s{seed}: InfoNCE test {r['infonce_test'][0]:.3f} -> {r['infonce_test'][-1]:.3f}, "
                  f"probe {r['probe_test_top1'][0]:.3f} -> {r['probe_test_top1'][-1]:.3f} ({runs[-1]['seconds']:.0f} s)",
                  flush=True)
    raw = linear_probe(top, y, t_top, t_y, backend="sklearn", C=cfg.probe_C)
    record = {
        "schema": SCHEMA,
        "method": "bijective encoders trained on InfoNCE (MI maximisation is not enough)",
        "dataset": "digits 8x8 (scikit-learn), views = top and bottom 4x8 halves, dequantised",
        "config": asdict(cfg),
        "seed": cfg.seeds[0],
        "provenance": provenance(command=command),
        "metrics": {
            "runs": runs,
            "log_k": math.log(cfg.batch_size),
            "raw_pixels": {"probe_train_top1": raw["train_top1"], "probe_test_top1": raw["test_top1"]},
            "n_train": int(top.shape[0]), "n_test": int(t_top.shape[0]),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
    }
    record["provenance"]["hardware"]["threads"] = cfg.threads
    write_results(args.out, record)
    print(f"wrote {args.out} ({len(runs)} runs, {record['metrics']['wall_seconds']:.0f} s)")
    return 0
