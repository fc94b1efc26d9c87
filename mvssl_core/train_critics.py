"""Train MI critics by gradient descent on correlated Gaussians (the staircase of Poole et al.) and
record every bound's estimate over the steps, with provenance, in results/critics.json.

Run through its entry point, ``scripts/experiments/train_critics.py`` (the command recorded in the file):
    python scripts/experiments/train_critics.py                       # full run: a few minutes on 2 CPU cores
    python scripts/experiments/train_critics.py --smoke --out /tmp/c.json   # seconds; run by tests/test_experiments.py

What runs. Data: x ~ N(0, I_d), y = rho x + sqrt(1 - rho^2) eps (``mvssl_core.synthetic``), d = 20,
with the true MI stepped through 2, 4, 6, 8, 10 nats (one stage of ``--steps-per-stage`` steps
each), a fresh batch every step. For each batch size and critic, one network is trained through
the whole staircase:

- InfoNCE and NWJ (``mvssl_core.bounds.infonce`` / ``nwj``), each with a *separable* critic
  f(x, y) = g(x)^T h(y) and a *concatenated* critic f(x, y) = m([x, y]), all MLPs (ReLU)
  (``mvssl_core.critics``);
- ER (``mvssl_core.bounds``' decomposition H(Y) + E log q(Y|X)): q(y|x) = N(mu(x), sigma^2 I)
  with mu an MLP trained by maximum likelihood (``mvssl_core.reconstruction.gaussian_log_likelihood``)
  and sigma^2 the running mean of the squared residual per coordinate (the Gaussian MLE, detached:
  the library's likelihood takes sigma as a number); H(Y) by the Gaussian-kernel KDE
  (``mvssl_core.entropy.kde_entropy``, Joe's estimator, self term included, fixed bandwidth).
  The closed-form entropy of N(0, I_d) (``mvssl_core.entropy.gaussian_entropy``) is recorded too,
  so the reader can tell the reconstruction's error from the KDE's.

Optionally (``--transforms cubic``) the same is repeated on the transformed family
(``synthetic.transformed_gaussians``: same MI, non-Gaussian marginals) at one batch size.

Every estimate is the bound evaluated on the step's fresh batch *before* the gradient step
(so it is never fitted to the batch it reports on). Curves are stored every ``--record-every``
steps; per-stage summaries (mean, sd over the second half of each stage) use every step.
Seeded and deterministic on a given machine and thread count (``torch.use_deterministic_algorithms``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mvssl_core import bounds, entropy, reconstruction, synthetic
from mvssl_core.critics import ConcatCritic, GaussianQ, SeparableCritic
from mvssl_core.heads import MLPSpec
from mvssl_core.results import SCHEMA, provenance, repository_root, write_results

DEFAULT_OUT = repository_root(Path(__file__).parent) / "results" / "critics.json"  # the checkout's results/


@dataclass(frozen=True)
class Config:
    """Everything that determines a run (saved, resolved, in the results file)."""

    dim: int = 20
    mis: tuple[float, ...] = synthetic.POOLE_STAIRCASE_NATS
    steps_per_stage: int = 1000
    batch_sizes: tuple[int, ...] = (64, 128)
    critics: tuple[str, ...] = ("separable", "concat")
    objectives: tuple[str, ...] = ("infonce", "nwj")
    er: bool = True
    transforms: tuple[str, ...] = ("cubic",)
    transform_batch_size: int = 128
    hidden: int = 128
    layers: int = 2
    embed: int = 32
    lr: float = 5e-4
    kde_bandwidth: float = 1.0
    sigma_momentum: float = 0.9
    record_every: int = 10
    seed: int = 0
    threads: int = 1  # one thread: with 2 threads on a busy 2-core machine, OpenMP waits made steps 10x slower
    dtype: str = "float32"

    @staticmethod
    def smoke() -> "Config":
        return Config(
            dim=4, mis=(1.0, 2.0), steps_per_stage=6, batch_sizes=(16,), hidden=16, layers=1,
            embed=8, record_every=2, transform_batch_size=16,
        )


def sample(n: int, cfg: Config, rho: float, family: str, gen: torch.Generator):
    dtype = getattr(torch, cfg.dtype)
    if family == "gaussian":
        return synthetic.correlated_gaussians(n, cfg.dim, rho, generator=gen, dtype=dtype)
    return synthetic.transformed_gaussians(n, cfg.dim, rho, transform=family, generator=gen, dtype=dtype)


def _finite_or_none(v: float) -> float | None:
    return round(v, 5) if math.isfinite(v) else None


def train_run(cfg: Config, objective: str, critic: str, batch: int, family: str, run_seed: int) -> dict:
    """Train one critic through the staircase; return its curves and per-stage summaries."""
    torch.manual_seed(run_seed)
    spec = MLPSpec(cfg.hidden, cfg.embed, cfg.layers + 1, bn=False)  # cfg.layers hidden ReLU layers
    if objective == "er":
        model: nn.Module = GaussianQ(cfg.dim, dataclasses.replace(spec, out=cfg.dim), cfg.sigma_momentum)
    elif critic == "separable":
        model = SeparableCritic(cfg.dim, spec)
    else:
        model = ConcatCritic(cfg.dim, dataclasses.replace(spec, out=1))
    model = model.to(getattr(torch, cfg.dtype))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # the same data stream for every run of one batch size and family (common random numbers)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + batch)
    h_true = float(entropy.gaussian_entropy(torch.eye(cfg.dim, dtype=torch.float64)))

    steps, curve, true_curve, ent_curve, rec_curve = [], [], [], [], []
    stages = []
    skipped = 0
    t0 = time.perf_counter()
    step = 0
    for mi in cfg.mis:
        rho = synthetic.rho_from_mi(mi, cfg.dim)
        stage_vals, stage_rec = [], []
        for s in range(cfg.steps_per_stage):
            step += 1
            x, y = sample(batch, cfg, rho, family, gen)
            if objective == "er":
                mean = model.mu(x)
                sigma = float(model.sigma2.sqrt())
                per_i = reconstruction.gaussian_log_likelihood(y, mean, sigma, reduction="none")
                rec = per_i.mean()
                with torch.no_grad():
                    h_kde = entropy.kde_entropy(y, "gaussian", bandwidth=cfg.kde_bandwidth).item()
                value = h_kde + rec.item()
                loss = -rec
                model.update_sigma(((y - mean) ** 2).mean().detach())
            else:
                scores = model(x, y)
                bound = bounds.infonce(scores) if objective == "infonce" else bounds.nwj(scores)
                value = bound.item()
                loss = -bound
            if math.isfinite(loss.item()):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            else:
                skipped += 1
            if math.isfinite(value) and s >= cfg.steps_per_stage // 2:
                stage_vals.append(value)
                if objective == "er":
                    stage_rec.append(rec.item())
            if step % cfg.record_every == 0:
                steps.append(step)
                curve.append(_finite_or_none(value))
                true_curve.append(round(mi, 5))
                if objective == "er":
                    ent_curve.append(_finite_or_none(h_kde))
                    rec_curve.append(_finite_or_none(rec.item()))
        n = len(stage_vals)
        t = torch.tensor(stage_vals, dtype=torch.float64) if n else torch.zeros(0)
        summary = {
            "mi": mi,
            "rho": round(rho, 6),
            "n": n,
            "mean": round(t.mean().item(), 5) if n else None,
            "sd": round(t.std().item(), 5) if n > 1 else None,
        }
        if objective == "er" and stage_rec:
            r = torch.tensor(stage_rec, dtype=torch.float64)
            summary["reconstruction_mean"] = round(r.mean().item(), 5)
            summary["er_closed_form_entropy_mean"] = round(h_true + r.mean().item(), 5)
            summary["sigma2_end"] = round(float(model.sigma2), 6)  # learned variance of q; truth 1 - rho^2
            summary["sigma2_true"] = round(1 - rho * rho, 6)
        stages.append(summary)
    run = {
        "name": f"{objective}/{critic}/k={batch}/{family}",
        "objective": objective,
        "critic": critic,
        "batch_size": batch,
        "family": family,
        "seed": run_seed,
        "seconds": round(time.perf_counter() - t0, 2),
        "skipped_nonfinite_steps": skipped,
        "step": steps,
        "estimate": curve,
        "true_mi": true_curve,
        "stages": stages,
    }
    if objective == "er":
        run["entropy_kde"] = ent_curve
        run["reconstruction"] = rec_curve
        run["entropy_closed_form"] = round(h_true, 5)
        if family != "gaussian":
            run["note"] = "entropy_closed_form is H of the untransformed Gaussian, not of the transformed Y"
    return run


def plan(cfg: Config) -> list[tuple[str, str, int, str]]:
    """(objective, critic, batch size, family) of every run, in order."""
    runs = []
    for batch in cfg.batch_sizes:
        for objective in cfg.objectives:
            for critic in cfg.critics:
                runs.append((objective, critic, batch, "gaussian"))
        if cfg.er:
            runs.append(("er", "gaussian_q", batch, "gaussian"))
    for family in cfg.transforms:
        for objective in cfg.objectives:
            runs.append((objective, "separable", cfg.transform_batch_size, family))
        if cfg.er:
            runs.append(("er", "gaussian_q", cfg.transform_batch_size, family))
    return runs


def run_all(cfg: Config, out: Path, command: str, log=print) -> dict:
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    runs = []
    for i, (objective, critic, batch, family) in enumerate(plan(cfg)):
        run = train_run(cfg, objective, critic, batch, family, run_seed=cfg.seed * 1000 + i)
        log(f"[{i + 1}/{len(plan(cfg))}] {run['name']}: {run['seconds']} s, stage means "
            + ", ".join(f"{s['mi']:g}->{s['mean']}" for s in run["stages"]))
        runs.append(run)
    record = {
        "schema": SCHEMA,
        "method": "MI critics trained by gradient descent: InfoNCE and NWJ (separable and concatenated "
        "MLP critics), ER (Gaussian q(y|x) with an MLP mean, Gaussian-KDE entropy)",
        "dataset": f"correlated_gaussians d={cfg.dim} staircase "
        + "-".join(f"{m:g}" for m in cfg.mis) + " nats"
        + (f" (+ transformed: {', '.join(cfg.transforms)})" if cfg.transforms else ""),
        "config": dataclasses.asdict(cfg),
        "seed": cfg.seed,
        "provenance": provenance(command=command),
        "metrics": {"runs": runs, "log_k": {str(b): math.log(b) for b in sorted({*cfg.batch_sizes, cfg.transform_batch_size})}},
    }
    write_results(out, record)
    return record


def parse_args(argv: list[str] | None = None) -> tuple[Config, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default: results/critics.json)")
    p.add_argument("--smoke", action="store_true", help="a tiny configuration that runs in seconds (for CI)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps-per-stage", type=int, default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--critics", nargs="+", choices=("separable", "concat"), default=None)
    p.add_argument("--objectives", nargs="+", choices=("infonce", "nwj"), default=None)
    p.add_argument("--no-er", action="store_true", help="skip the ER runs")
    p.add_argument("--transforms", nargs="*", choices=synthetic.TRANSFORMS, default=None,
                   help="extra runs on the transformed family (none: pass the flag alone)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--record-every", type=int, default=None)
    a = p.parse_args(argv)
    cfg = Config.smoke() if a.smoke else Config()
    overrides = {
        "seed": a.seed, "steps_per_stage": a.steps_per_stage, "threads": a.threads, "record_every": a.record_every,
        "batch_sizes": tuple(a.batch_sizes) if a.batch_sizes else None,
        "critics": tuple(a.critics) if a.critics else None,
        "objectives": tuple(a.objectives) if a.objectives else None,
        "transforms": tuple(a.transforms) if a.transforms is not None else None,
        "er": False if a.no_er else None,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    for name in ("steps_per_stage", "threads", "record_every"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return cfg, a.out


def main(argv: list[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "scripts/experiments/train_critics.py", *argv])
    t0 = time.perf_counter()
    run_all(cfg, out, command)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0
