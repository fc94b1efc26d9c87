"""Pre-training experiments of part 2 of the book: many short runs of the trainer on a small data set,
each recorded with its curves and final accuracies in one results file per experiment.

Run through its entry point, ``scripts/experiments/ssl_runs.py`` (the command recorded in each file):
    python scripts/experiments/ssl_runs.py                      # every experiment (make results): see book/reproduce.md for the time
    python scripts/experiments/ssl_runs.py dynamics clustering  # only these
    python scripts/experiments/ssl_runs.py --smoke --out-dir /tmp/r   # seconds; run by tests/test_experiments.py
    python scripts/experiments/ssl_runs.py batch --data cifar10 --data-root ~/data   # the same on CIFAR-10

Experiments (one file each, ``results/ssl/<name>.json``), the functions of :data:`EXPERIMENTS`, each
described by its docstring: :func:`dynamics` (BYOL and DINO ablations), :func:`clustering` (SwAV and
DeepCluster against K), :func:`ablation` and :func:`ablation_clustering` (ER with one term only),
:func:`ema` (constant EMA coefficients), :func:`batch` (batch sizes at a fixed number of steps),
:func:`choices` (SimCLR-ER's concentration and entropy estimator) and :func:`shapes` (InfoNCE against ER
on a second data set, generated shapes, whatever ``--data`` says).

Every run goes through :func:`mvssl_core.train.train` (the trainer of ``pretrain.sh``) in a temporary
folder; the record keeps, per run, the logged metrics (every ``log_every`` steps), the final kNN and
linear-probe accuracies on the held-out split, and the run's resolved configuration. Each experiment
also records the accuracies of the same backbone at random initialisation (per seed), the floor any
pre-training should beat. Runs are independent processes (``--jobs``, one thread each, spawned: they
import this module) and seeded; a run's numbers do not depend on ``--jobs``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import copy
import dataclasses
import functools
import math
import multiprocessing
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mvssl_core.config import BATCHED_VIEWS
from mvssl_core.results import SCHEMA, provenance, repository_root, write_results

__all__ = ["RECIPES", "HEADS", "SHARED_OPTIM", "FAMILIES", "Scale", "Run", "EXPERIMENTS", "dynamics", "clustering",
           "batch", "ema", "ablation", "ablation_clustering", "choices", "shapes", "scale_for", "run_config",
           "run_experiment", "parse_args", "main"]

DEFAULT_OUT_DIR = repository_root(Path(__file__).parent) / "results" / "ssl"  # the checkout's results/ssl
FAMILIES = ("simclr", "byol", "dino", "swav", "deepcluster")
KEEP = (  # logged metrics kept in the record
    "step", "epoch", "lr", "loss", "entropy", "reconstruction", "collapse_std", "effective_rank",
    "discrete_entropy", "discrete_reconstruction", "loss_entropy", "loss_reconstruction", "probe_acc",
)

# The small-scale recipe of each family: heads and method settings (``hyper``) and the optimiser
# settings that differ from the shared ones (``optim``: base lr before linear scaling with the batch,
# warm-up as a fraction of the run); ``er_hyper``: settings of the ER variant only. The backbone is a
# ConvNet with widths (16, 32): 32-d features. Heads are the papers' divided down; every other choice and
# its source:
RECIPES = {
    # SimCLR: projector with BN on its output as in the official TF code (the paper's Sec. 2.1 omits it);
    # temperature 0.2 (SimCLR's CIFAR-10 range 0.1-0.5, Appendix B.9).
    "simclr": {"hyper": {"projector": {"hidden": 128, "out": 64, "last_bn": True}, "temperature": 0.2},
               "optim": {}},
    # BYOL: projector and predictor as in Sec. 3.3; EMA 0.99 -> 1 on a cosine (the paper's 0.996 is for
    # 1000 epochs at batch 4096: these runs are about 100x shorter, so the teacher must move faster).
    "byol": {"hyper": {"projector": {"hidden": 128, "out": 64}, "predictor": {"hidden": 128, "out": 64},
                       "base_momentum": 0.99, "final_momentum": 1.0},
             "optim": {}},
    # DINO's ResNet-50 settings (its README: --use_bn_in_head, as for any convolutional backbone), teacher
    # momentum 0.996 (main_dino.py advises a higher value than its ViT default at small batch), teacher
    # temperature 0.04 throughout (main_dino.py's default; it calls values above 0.07 unstable), the last
    # layer frozen for the first epoch (its default), and a gentler schedule: base lr 0.01 with a warm-up of a
    # third of the run (its 10 of 100 epochs at ViT scale is a tenth; at 30 epochs a tenth is 3 epochs, which
    # collapses the head here).
    "dino": {"hyper": {"head": {"hidden": 128, "bottleneck": 64, "out": 256, "bn": True},
                       "base_momentum": 0.996, "final_momentum": 1.0,
                       "teacher_temperature_start": 0.04, "teacher_temperature_end": 0.04,
                       "freeze_last_layer": "1 epoch"},
             "optim": {"lr": 0.01, "warmup": 1 / 3}},
    # SwAV's small-batch recipe (its README, batch 256: 3000 prototypes, a queue of 3840 rows and prototypes
    # frozen during the first epoch): a queue of 4 batches and at least K rows, used from a third of the run,
    # so that Sinkhorn equipartitions over batch + queue >= K rows; base lr 0.01 with a warm-up of a third of
    # the run (at lr 0.1 SwAV stays on its trivial fixed point: uniform predictions, loss log K). K = 256:
    # measured here at batch 64, K = 64 left the loss within 0.05 nats of log K in 2 of 5 seeds (the recipe
    # of results at 2d883b1), K = 256 trained in all 5 seeds of a probe. SwAV-ER only: targets sharper
    # than the predictions, as for DeepCluster-ER below (with K = 256 and targets at 0.1, seed 1 stayed at
    # its trivial loss; at 0.05 seeds 1 and 3 trained, kNN 93.6% and 91.4% against 85.5% and 81.6% untrained).
    "swav": {"hyper": {"projector": {"hidden": 128, "out": 64}, "prototypes": {"n_prototypes": 256},
                       "queue_length": "4 batches, at least K", "queue_start": 1 / 3, "freeze_prototypes": "1 epoch"},
             "er_hyper": {"target_temperature": 0.05},
             "optim": {"lr": 0.01, "warmup": 1 / 3}},
    # DeepCluster-v2 as in the official code: prototypes are the k-means centroids, frozen between
    # re-clusterings, and the memory bank is filled by a pass over the data before the first step (the
    # defaults of mvssl_core.methods.DeepCluster); one prototype set at this scale (the paper's 3).
    # DeepCluster-ER only: targets sharper than the predictions (tau 0.05 against 0.1), as DINO's teacher
    # (0.04 against 0.1) and SwAV's Sinkhorn (epsilon 0.05). Measured here at batch 64: with targets at the
    # predictions' temperature it stays on its uniform fixed point (loss at its trivial 0; 1 of 5 seeds
    # trained, results at 2d883b1); at 0.05 it trained in all 5 seeds of a probe.
    "deepcluster": {"hyper": {"projector": {"hidden": 128, "out": 64}, "prototypes": {"n_prototypes": 64, "heads": 1}},
                    "er_hyper": {"target_temperature": 0.05},
                    "optim": {}},
}
HEADS = {family: recipe["hyper"] for family, recipe in RECIPES.items()}  # recorded in every results file
SHARED_OPTIM = {"name": "sgd", "lr": 0.1, "scale_lr": True, "weight_decay": 1e-5, "warmup": 1 / 15}


@dataclass(frozen=True)
class Scale:
    """Sizes shared by every run of one invocation (the full one, or the seconds-long smoke one)."""

    data: str = "digits"
    data_root: str = "data"
    size: int = 16
    widths: tuple[int, ...] = (16, 32)
    flip: float = 0.0                 # horizontal flips: none for digits (a mirrored digit is not that digit)
    epochs: int = 15                  # ema / ablation runs
    dynamics_epochs: int = 30         # dynamics / clustering runs
    batch_size: int = 128             # dynamics / clustering / ablation
    ema_batch_size: int = 64
    batch_sizes: tuple[int, ...] = (16, 64)
    batch_steps: int = 500            # batch runs: optimizer steps at every batch size (22 epochs at 64)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    batch_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # batch runs: 150 (10 methods x 3 settings x 5 seeds)
    dynamics_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    prototypes: tuple[int, ...] = (8, 64, 256, 512)
    emas: tuple[float, ...] = (0.0, 0.99)
    kappas: tuple[float, ...] = (2.0, 10.0, 50.0)  # choices: SimCLR-ER's training concentration
    shapes_n: int = 2000              # shapes: generated images per split (6 classes)
    points: int = 60                  # logged points per run (about)
    steps: int | None = None          # smoke: a fixed, tiny number of steps per run
    max_runs: int | None = None       # smoke: the first runs of each experiment only

    @staticmethod
    def smoke(data: str = "digits", data_root: str = "data") -> "Scale":
        return Scale(data=data, data_root=data_root, size=8, widths=(4, 8), batch_size=16, ema_batch_size=16,
                     batch_sizes=(16, 32), batch_steps=3, seeds=(0,), batch_seeds=(0,), dynamics_seeds=(0,), prototypes=(4, 8), emas=(0.0, 0.9),
                     kappas=(2.0, 10.0), shapes_n=48, points=3, steps=3, max_runs=3)


@dataclass
class Run:
    """One pre-training run of an experiment: the labels the chapters group by, and its config."""

    name: str
    family: str
    method: str
    variant: str
    seed: int
    batch_size: int
    epochs: int
    hyper: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # e.g. {"ema": 0.9} or {"K": 32}
    steps: int | None = None  # a fixed number of optimizer steps instead of ``epochs``
    optim: dict = field(default_factory=dict)  # changes to the recipe's optimiser settings (e.g. {"lr": 0.05})


def _hyper(family: str, method: str | None = None, **changes) -> dict:
    """The recipe's hyper-parameters of ``family`` (with its ``er_hyper`` for an ER ``method``), changed."""
    hyper = copy.deepcopy(HEADS[family])
    if method is not None and method.endswith("_er"):
        hyper.update(copy.deepcopy(RECIPES[family].get("er_hyper", {})))
    hyper.update(changes)
    return hyper


def _resolve_hyper(hyper: dict, batch_size: int, total: int, steps_per_epoch: int) -> dict:
    """The recipe's run-relative values as numbers: "1 epoch" -> its fraction of the run, "4 batches" -> rows."""
    out = dict(hyper)
    for key, value in hyper.items():
        if value == "1 epoch":
            out[key] = min(1.0, steps_per_epoch / total)
        elif value == "4 batches":
            out[key] = 4 * batch_size
        elif value == "4 batches, at least K":
            out[key] = max(4 * batch_size, hyper["prototypes"]["n_prototypes"])
    return out


def dynamics(s: Scale) -> list[Run]:
    """BYOL and DINO as published (at this scale) and their ablations: BYOL without EMA (the target is a copy
    of the online network), without the predictor, and without both; DINO without centring, without EMA, and
    with the teacher temperature warmed up from 0.04 to 0.07 (its ViT default). The chapters read the curves
    of the entropy (vMF KDE of the projections, and the discrete entropy of DINO's assignments) and of the
    reconstruction."""
    variants = [
        ("byol", "published", {}),
        ("byol", "no EMA", {"base_momentum": 0.0, "final_momentum": 0.0}),
        ("byol", "no predictor", {"predictor": None}),
        ("byol", "no predictor, no EMA", {"predictor": None, "base_momentum": 0.0, "final_momentum": 0.0}),
        ("dino", "published", {}),
        ("dino", "no centring", {"centering": False}),
        ("dino", "no EMA", {"base_momentum": 0.0, "final_momentum": 0.0}),
        ("dino", "teacher T 0.04 -> 0.07", {"teacher_temperature_start": 0.04, "teacher_temperature_end": 0.07}),
    ]
    return [Run(f"{fam}/{variant}/s{seed}", fam, fam, variant, seed, s.batch_size, s.dynamics_epochs, _hyper(fam, **ch))
            for fam, variant, ch in variants for seed in s.dynamics_seeds]


def clustering(s: Scale) -> list[Run]:
    """SwAV and DeepCluster with K = 8 ... 512 prototypes / clusters: the entropy of the assignments against
    log K, and the reconstruction (cross-entropy), over training."""
    runs = []
    for fam in ("swav", "deepcluster"):
        for k in s.prototypes:
            protos = {"n_prototypes": k} if fam == "swav" else {"n_prototypes": k, "heads": 1}
            for seed in s.dynamics_seeds:
                runs.append(Run(f"{fam}/K={k}/s{seed}", fam, fam, f"K={k}", seed, s.batch_size, s.dynamics_epochs,
                                _hyper(fam, prototypes=protos), {"K": k}))
    return runs


def batch(s: Scale) -> list[Run]:
    """Every method and its ER variant at several batch sizes for the same number of optimizer steps (500
    at full scale: the largest batch trains for 22 epochs), in two regimes of the learning rate: ``linear``
    keeps the large-batch recipe (peak lr = base lr x batch / 256, the rule of the papers' batch-size tables,
    under which the ER paper sees BYOL and DINO degrade at small batch) and ``sqrt`` starts from the same peak
    lr at the largest batch and scales it with the square root of the batch (Krizhevsky, 2014), so that a
    small batch is not also a much smaller step. The largest batch is one run for both regimes."""
    largest = max(s.batch_sizes)
    runs = []
    for fam in FAMILIES:
        for er in (False, True):
            m = fam + ("_er" if er else "")
            base = {**SHARED_OPTIM, **RECIPES[fam]["optim"]}["lr"]
            for b in s.batch_sizes:
                for regime in (("linear", "sqrt") if b != largest else ("both",)):
                    ratio = b / largest
                    factor = largest / 256 * (math.sqrt(ratio) if regime == "sqrt" else ratio)
                    for seed in s.batch_seeds:
                        runs.append(Run(f"{m}/b={b}/{regime}/s{seed}", fam, m, "ER" if er else "original", seed, b,
                                        s.epochs, _hyper(fam, m), {"batch_size": b, "regime": regime},
                                        steps=s.batch_steps, optim={"lr": base * factor, "scale_lr": False}))
    return runs


def ema(s: Scale) -> list[Run]:
    """BYOL, DINO and their ER variants at several constant EMA coefficients (the teacher's momentum held
    fixed for the whole run; 0 makes the teacher a copy of the online network)."""
    return [Run(f"{m}/ema={lam}/s{seed}", fam, m, "ER" if er else "original", seed, s.ema_batch_size, s.epochs,
                _hyper(fam, m, base_momentum=lam, final_momentum=lam), {"ema": lam})
            for fam in ("byol", "dino") for er in (False, True) for m in [fam + ("_er" if er else "")]
            for lam in s.emas for seed in s.seeds]


def _ablation(s: Scale, families: tuple[str, ...]) -> list[Run]:
    return [Run(f"{fam}_er/{terms}/s{seed}", fam, f"{fam}_er", terms, seed, s.batch_size, s.epochs,
                _hyper(fam, f"{fam}_er", er_terms=terms), {"er_terms": terms})
            for fam in families for terms in ("both", "entropy", "reconstruction")
            for seed in s.seeds]


def ablation(s: Scale) -> list[Run]:
    """ER variants of SimCLR, BYOL and DINO that maximise only the entropy or only the reconstruction term
    (``er_terms``), beside both."""
    return _ablation(s, ("simclr", "byol", "dino"))


def ablation_clustering(s: Scale) -> list[Run]:
    """The same ablation for the ER variants of SwAV and DeepCluster (a file of its own, read by the book
    together with :func:`ablation`'s: :func:`mvssl_core.experiments.merge_records`)."""
    return _ablation(s, ("swav", "deepcluster"))


def choices(s: Scale) -> list[Run]:
    """SimCLR-ER with the choices the paper leaves open: the vMF concentration kappa of both terms of the
    loss (2, 10 = the official code's default, 50) with Joe's estimator, and the plug-in estimator (the
    official code's default) at kappa 10. The logged entropy and reconstruction use kappa 10 in every run,
    so the curves are comparable."""
    runs = [Run(f"simclr_er/kappa={kappa:g}/s{seed}", "simclr", "simclr_er", f"kappa={kappa:g}", seed,
                s.batch_size, s.epochs, _hyper("simclr", kappa=kappa), {"kappa": kappa, "estimator": "joe"})
            for kappa in s.kappas for seed in s.seeds]
    runs += [Run(f"simclr_er/plugin/s{seed}", "simclr", "simclr_er", "plug-in", seed, s.batch_size, s.epochs,
                 _hyper("simclr", estimator="plugin"), {"kappa": 10.0, "estimator": "plugin"})
             for seed in s.seeds]
    return runs


def shapes(s: Scale) -> list[Run]:
    """SimCLR (InfoNCE) against SimCLR-ER on a second data set: generated shapes (mvssl_core.data.Shapes,
    6 classes on textured backgrounds, ``shapes_n`` images per split), the same recipe as on digits."""
    return [Run(f"{m}/s{seed}", "simclr", m, "ER" if m.endswith("_er") else "original", seed, s.batch_size,
                s.epochs, _hyper("simclr"), {}) for m in ("simclr", "simclr_er") for seed in s.seeds]


# name -> the runs of that experiment at a scale; each function's docstring says what it runs
EXPERIMENTS = {"dynamics": dynamics, "clustering": clustering, "ablation": ablation,
               "ablation_clustering": ablation_clustering, "ema": ema, "batch": batch, "choices": choices,
               "shapes": shapes}
EXPERIMENT_DATA = {"shapes": "shapes"}  # experiments on their own data set, whatever --data says
DATASET_NOTE = {"digits": "scikit-learn digits (1,797 8x8 images, 10 classes), 80/20 split, rendered at {size} px",
                "shapes": "generated shapes (mvssl_core.data.Shapes: 6 classes, {n} images per split), "
                          "rendered at {size} px"}


def scale_for(name: str, s: Scale) -> Scale:
    """The scale of experiment ``name``: ``s``, on the experiment's own data set where it has one."""
    data = EXPERIMENT_DATA.get(name)
    return s if data is None or data == s.data else dataclasses.replace(s, data=data, flip=0.0)


def _data(s: Scale) -> dict:
    """The ``data`` section of a run's configuration at scale ``s`` (views and augmentations included)."""
    data = {"name": s.data, "root": s.data_root, "size": s.size, "views": "simclr",
            "view_kwargs": {"strength": 0.5, "scale": [0.2, 1.0], "flip": s.flip},
            "gpu_pipeline": s.data in BATCHED_VIEWS}
    if s.data == "shapes":
        data["n"] = s.shapes_n
        # A shape's half-extent is 20-40% of the image side (mvssl_core.data.Shapes): a crop of 20% of the area
        # often leaves it out of one view, and the pair then agrees on colour and background only. At
        # [0.2, 1] neither SimCLR nor SimCLR-ER moved kNN accuracy off the untrained backbone's (22% vs 21%,
        # 5 seeds; also at 32 px and at colour strength 1.0, one seed each); at [0.6, 1], SimCLR seed 0
        # reached 25.4% against 21.5%.
        data["view_kwargs"]["scale"] = [0.6, 1.0]
    return data


@functools.lru_cache(maxsize=None)
def _n_train(data: str, root: str, size: int, n: int | None = None) -> int:
    from mvssl_core.build import build_train_set
    from mvssl_core.config import RunConfig, from_dict

    return len(build_train_set(from_dict(RunConfig, {"data": {"name": data, "root": root, "size": size, "n": n}})))


def run_config(run: Run, s: Scale) -> dict:
    """The trainer's configuration of one run (a dict of :class:`mvssl_core.config.RunConfig`)."""
    data = _data(s)
    steps_per_epoch = _n_train(s.data, s.data_root, s.size, data.get("n")) // run.batch_size
    steps = s.steps if s.steps is not None else run.steps  # smoke runs: s.steps for every run
    total = steps if steps is not None else run.epochs * steps_per_epoch
    optim = {**SHARED_OPTIM, **RECIPES[run.family]["optim"], **run.optim}
    warmup = optim.pop("warmup")  # a fraction of the run, whatever its length
    optim["warmup_epochs"] = warmup * total / steps_per_epoch
    return {
        "method": run.method,
        "hyper": _resolve_hyper(run.hyper, run.batch_size, total, steps_per_epoch),
        "data": data,
        "model": {"backbone": "convnet", "kwargs": {"widths": list(s.widths)}},
        "optim": optim,
        "batch_size": run.batch_size,
        "epochs": run.epochs,
        "steps": steps,
        "seed": run.seed,
        "num_workers": 0,
        "log_every": max(1, total // s.points),
        "checkpoint_every": 0,
        "progress": False,
        "eval": {"knn": True, "linear": True},
    }


def _one(run: Run, s: Scale) -> dict:
    """Train one run in a temporary folder (a worker process) and return its entry of the record."""
    import torch

    from mvssl_core.config import RunConfig, from_dict
    from mvssl_core.methods import resolved_hyper
    from mvssl_core.train import train

    torch.set_num_threads(1)
    values = run_config(run, s)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mvssl-exp-") as tmp:
        values["out"] = tmp
        record = train(from_dict(RunConfig, values))
    history = record["metrics"]["history"]
    return {
        "name": run.name, "family": run.family, "method": run.method, "variant": run.variant, "seed": run.seed,
        "batch_size": run.batch_size, "epochs": run.epochs, "labels": run.labels,
        "steps": record["metrics"]["steps"],
        "history": {k: history[k] for k in KEEP if k in history},
        "final": record["metrics"]["final"],
        "seconds": round(time.perf_counter() - t0, 2),
        "config": {**{k: v for k, v in record["config"].items() if k not in ("out", "progress")},
                   "resolved": resolved_hyper(run.method, values["hyper"])},
    }


def _random_init(seed: int, s: Scale) -> dict:
    """kNN and linear-probe accuracy of the backbone at random initialisation (same seed as the runs)."""
    import torch

    from mvssl_core.build import build_model, build_train_set
    from mvssl_core.config import RunConfig, from_dict
    from mvssl_core.evaluate import evaluate_run

    torch.set_num_threads(1)
    values = run_config(Run("random", "simclr", "simclr", "random init", seed, s.batch_size, s.epochs,
                            _hyper("simclr")), s)
    cfg = from_dict(RunConfig, values)
    torch.manual_seed(seed)
    model = build_model(cfg, len(build_train_set(cfg)))
    return {"seed": seed, **evaluate_run(cfg, model.backbone)}


def run_experiment(name: str, s: Scale, jobs: int, out: Path, prov: dict) -> dict:
    """Run every run of experiment ``name`` (``jobs`` at a time) and write its record to ``out``.

    ``prov`` is the provenance taken when the command started (:func:`mvssl_core.results.provenance`):
    taken later, the results files this command had already written would make the checkout look dirty.
    """
    s = scale_for(name, s)
    runs = EXPERIMENTS[name](s)[: s.max_runs]
    seeds = sorted({r.seed for r in runs})
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        pending = [pool.submit(_one, r, s) for r in runs]
        baselines = [pool.submit(_random_init, seed, s) for seed in seeds]
        entries = []
        for i, f in enumerate(pending):
            entries.append(f.result())
            e = entries[-1]
            print(f"[{name} {i + 1}/{len(runs)}] {e['name']}: knn {e['final'].get('knn_top1', float('nan')):.3f} "
                  f"linear {e['final'].get('linear_top1', float('nan')):.3f} ({e['seconds']:.0f} s)", flush=True)
        random_init = [f.result() for f in baselines]
    note = DATASET_NOTE.get(s.data, "{size} px").format(size=s.size, n=s.shapes_n)
    record = {
        "schema": SCHEMA,
        "method": f"ssl_runs experiment '{name}'",
        "dataset": f"{s.data}: {note}",
        "config": {"experiment": name, "scale": _scale_dict(s), "jobs": jobs, "heads": HEADS, "recipes": RECIPES},
        "seed": seeds[0],
        "provenance": copy.deepcopy(prov),
        "metrics": {"runs": entries, "random_init": random_init,
                    "wall_seconds": round(time.perf_counter() - t0, 1)},
    }
    record["provenance"]["hardware"]["threads"] = 1  # per run (each run is its own one-thread process)
    write_results(out, record)
    return record


def _scale_dict(s: Scale) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in s.__dict__.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                   help=f"which to run (default: all): {', '.join(EXPERIMENTS)}")
    p.add_argument("--smoke", action="store_true", help="tiny networks, 3 steps, the first 3 runs (seconds)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default {DEFAULT_OUT_DIR}")
    p.add_argument("--data", default="digits", help="data set of mvssl_core.data (digits, cifar10, stl10, ...)")
    p.add_argument("--data-root", default="data", help="folder of on-disk data sets")
    args = p.parse_args(argv)
    unknown = [e for e in args.experiments if e not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/experiments/ssl_runs.py", *(sys.argv[1:] if argv is None else argv)])
    s = Scale.smoke(args.data, args.data_root) if args.smoke else Scale(data=args.data, data_root=args.data_root)
    if args.data != "digits" and not args.smoke:
        s = Scale(data=args.data, data_root=args.data_root, size=32, flip=0.5)
    prov = provenance(command=command)
    for name in args.experiments or list(EXPERIMENTS):
        out = args.out_dir / f"{name}.json"
        record = run_experiment(name, s, args.jobs, out, prov)
        print(f"{name}: {len(record['metrics']['runs'])} runs in {record['metrics']['wall_seconds']:.0f} s -> {out}")
    return 0

