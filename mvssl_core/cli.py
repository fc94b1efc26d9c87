"""Command line: ``python -m mvssl_core pretrain ...`` and ``python -m mvssl_core evaluate ...``.

Pre-train (defaults are those of :class:`mvssl_core.config.RunConfig`; a config file, then the
flags, then ``--set`` overrides change them, in that order)::

    python -m mvssl_core pretrain --method byol_er --data digits --steps 200 --out runs/byol_er
    python -m mvssl_core pretrain --config my_run.yaml --set optim.lr=0.1 --set hyper.temperature=0.2
    python -m mvssl_core pretrain --out runs/byol_er --resume          # continue from runs/byol_er/checkpoint.pt
    torchrun --nproc_per_node 4 -m mvssl_core pretrain --config ...     # DDP, global-batch estimators

Evaluate a checkpoint's encoder (kNN and linear probe on frozen features)::

    python -m mvssl_core evaluate --checkpoint runs/byol_er/checkpoint.pt [--data digits] [--results out.json]

The linear-evaluation protocol on a finished run (100 epochs of SGD on a linear head over the frozen
encoder's features of augmented images; top-1 and top-5 written into the run's results file, and into
its ``results_file`` when the run has one and that file is absent or holds this run's record, or into the
``--set results_file=PATH`` named; one process or all of them under torchrun; the run folder is locked
against a second writer meanwhile; every epoch is checkpointed in ``<run>/linear_eval.pt``, from which a
rerun with the same settings resumes, and which is deleted once the results are written)::

    python -m mvssl_core linear-eval runs/byol_er [--set data.root=/data/imagenet] [--epochs 100]

Errors in the arguments, the configuration, the data or a checkpoint end the program with a one-line
message and exit status 2 (every numeric flag is range-checked when the arguments are parsed, before a
checkpoint or any data is read); a run that diverges ends with a one-line message and exit status 1.
A run stopped by SIGTERM or SIGUSR1 finishes its step, writes its checkpoint, prints one line and exits 0
(:mod:`mvssl_core.preempt`); ``--resume`` continues it.
Under torchrun, ``MVSSL_DIST_TIMEOUT_S`` (default 600) bounds how long a rank waits for the others.
Log records go to stderr (``mvssl_core``'s from level INFO, WARNING with linear-eval's ``--quiet``; other
libraries' from WARNING), each line with its time and rank: a run's progress is a line at each tenth of it
on rank 0 (the interactive bar replaces them on a terminal).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable

from mvssl_core.config import MAX_SEED, MAX_SIZE, ConfigError, RunConfig, from_dict, load_config, to_dict, validate

__all__ = ["main", "build_parser"]

# flag -> dotted config key
_FLAGS = {
    "method": "method",
    "data": "data.name",
    "size": "data.size",
    "backbone": "model.backbone",
    "steps": "steps",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "accumulate": "accumulate",
    "seed": "seed",
    "out": "out",
    "device": "device",
    "num_workers": "num_workers",
}


_MAX_INT = 2**63 - 1  # what a torch int64 holds


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``prog: error: argument --x: ...``), exit status 2."""

    def error(self, message: str) -> None:  # argparse's own prints the usage too: several lines
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_in(lo: int, hi: int = _MAX_INT) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in [lo, hi] (else "error: argument --x: ..." and exit status 2)."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError: argparse says "invalid int value: 'x'"
        if not lo <= value <= hi:
            bound = f">= {lo}" if hi == _MAX_INT else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in its own messages
    return parse


def _positive_float(text: str) -> float:
    """An argparse ``type=``: a finite number > 0."""
    value = float(text)  # a ValueError: argparse says "invalid _positive_float value: 'x'"
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser; every numeric flag is range-checked here, before a checkpoint or any data is read."""
    parser = _Parser(prog="python -m mvssl_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pretrain,evaluate,linear-eval}")

    p = sub.add_parser("pretrain", help="pre-train a method (CPU, or several processes under torchrun)")
    p.add_argument("--config", help="YAML file of config keys (see mvssl_core/config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.1 (repeatable; the value is read as YAML)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--method", help="method name, e.g. simclr, byol_er, dino, swav_er, deepcluster")
    p.add_argument("--data", help="data set: digits, shapes, cifar10, cifar100, stl10, imagefolder")
    p.add_argument("--size", type=_int_in(8, MAX_SIZE), help=f"image side in px (8 to {MAX_SIZE})")
    p.add_argument("--backbone", help="resnet18, resnet50 or convnet")
    p.add_argument("--steps", type=_int_in(1), help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=_int_in(1))
    p.add_argument("--batch-size", type=_int_in(2), help="the global batch")
    p.add_argument("--accumulate", type=_int_in(1), help="gradient-accumulation micro-batches per step")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), help=f"0 to {MAX_SEED}")
    p.add_argument("--out", help="the run's folder")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--num-workers", type=_int_in(0))
    p.add_argument("--no-progress", action="store_true",
                   help="no interactive progress bar (rank 0 still logs a line at each tenth of the run)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--stop-after", type=_int_in(1), metavar="STEPS",
                   help="stop once STEPS steps are done, as a pre-emption would (without the final checkpoint "
                        "and results; to test resuming)")

    e = sub.add_parser("evaluate", help="kNN and linear probe of a checkpoint's frozen encoder")
    e.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pretrain")
    e.add_argument("--data", help="data set to evaluate on (default: the run's)")
    e.add_argument("--size", type=_int_in(8, MAX_SIZE), help="image side in px (default: the run's)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the run (e.g. eval.k=10, data.root=/data)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--results", help="also write a results file (JSON) here")

    le = sub.add_parser("linear-eval", help="linear-evaluation protocol on a finished run; top-1/top-5 into its results")
    le.add_argument("run", metavar="RUN_DIR", help="the run's folder (holds checkpoint.pt and results.json)")
    le.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key of the run (e.g. data.root=/data/imagenet, num_workers=8)")
    le.add_argument("--epochs", type=_int_in(1), help="epochs of the linear head (default 100)")
    le.add_argument("--batch-size", type=_int_in(1), help="the global batch (default 1024)")
    le.add_argument("--lr", type=_positive_float, help="base learning rate, scaled by batch/256 (default 0.1)")
    le.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    le.add_argument("--quiet", action="store_true", help="no line per epoch")
    return parser


_positive_float.__name__ = "float"  # argparse names the type in its own messages


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    out = []
    for flag, key in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out


def _pretrain(args: argparse.Namespace, command: str) -> int:
    from mvssl_core import runstate
    from mvssl_core.config import dump_yaml
    from mvssl_core.train import train

    overrides = _flag_overrides(args) + list(args.overrides)
    base = None
    if args.resume:
        # the checkpoint's configuration is the base; the flags may only change what does not alter the result
        probe_cfg = load_config(args.config, overrides)
        run = runstate.run_folder(probe_cfg)
        ckpt = run / runstate.CHECKPOINT_NAME
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; pass the run's --out, or start without --resume")
        base = to_dict(runstate.checkpoint_config(runstate.load_checkpoint(ckpt), str(ckpt)))
        base["out"] = str(run)
        _stored_results_file(base.get("results_file"), _names_results_file(args.config, overrides), ckpt)
    elif args.method is None and args.config is None and not any(o.startswith("method=") for o in args.overrides):
        raise ConfigError("choose a method: --method NAME (e.g. --method simclr), or a --config file that sets one")
    cfg = load_config(args.config, overrides, base=base)
    if args.print_config:
        print(dump_yaml(to_dict(cfg)), end="")
        return 0
    record = train(cfg, resume=args.resume, stop_after=args.stop_after, command=command)
    if record is not None:
        final = record["metrics"]["final"]
        print(json.dumps({"run": str(cfg.run_dir()), **final}))
    return 0


def _names_results_file(config: str | None, overrides: list[str]) -> bool:
    """Whether the command line (its config file or a --set) names a results_file."""
    from mvssl_core.config import parse_override, read_yaml

    return (any(parse_override(o)[0] == ["results_file"] for o in overrides)
            or (config is not None and "results_file" in read_yaml(config)))


def _stored_results_file(stored: str | None, given: bool, ckpt: object) -> None:
    """Refuse a relative ``results_file`` from a checkpoint that the command line does not replace: it was relative
    to the folder the run was started from, which is unknown now (new runs store an absolute path)."""
    from pathlib import Path

    if not given and stored is not None and not Path(stored).is_absolute():
        raise ConfigError(f"{ckpt} stores the relative results_file {stored!r} (relative to the folder the run was "
                          "started from); name it on the command line: --set results_file=PATH, or "
                          "--set results_file=null")


def _evaluate(args: argparse.Namespace, command: str) -> int:
    import torch

    from pathlib import Path

    from mvssl_core import results, runlock
    from mvssl_core.config import apply_overrides
    from mvssl_core.dist import Runtime
    from mvssl_core.evaluate import evaluate_run
    from mvssl_core.runstate import CHECKPOINT_NAME, checkpoint_config, load_checkpoint, run_record

    if args.results is not None and not args.results.strip():
        raise ConfigError("--results is empty; name the results file to write (e.g. --results runs/x/eval.json), "
                          "or leave the flag out")
    state = load_checkpoint(args.checkpoint)
    values = to_dict(checkpoint_config(state, args.checkpoint))
    extra = list(args.overrides)
    if args.data is not None:
        extra.append(f"data.name={args.data}")
    if args.size is not None:
        extra.append(f"data.size={args.size}")
    cfg = validate(from_dict(RunConfig, apply_overrides(values, extra)))
    backbone, _ = _load_backbone(state, cfg, args.checkpoint)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    backbone.to(device)
    rt = Runtime(device, 0, 1, False, cuda, cuda, False)
    final = evaluate_run(cfg, backbone, rt)
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": int(state["step"]), **final}))
    if args.results:
        metrics = {"checkpoint": str(args.checkpoint), "step": int(state["step"]), "final": final}
        record = run_record(cfg, metrics, command)
        folder = Path(args.results).parent  # a run folder's file: written under its lock
        with runlock.hold(folder if (folder / CHECKPOINT_NAME).is_file() else None, command):
            results.write_results(args.results, record)
    return 0


def _load_backbone(state: dict, cfg: RunConfig, source: object):
    """The checkpoint's encoder (``build_backbone`` of the run's model, loaded with its weights) and its feature size;
    a ConfigError if the weights do not fit the model, a CheckpointError if they are not finite."""
    import torch

    from mvssl_core.backbones import build_backbone
    from mvssl_core.runstate import CheckpointError

    backbone, feature_dim = build_backbone(cfg.model.backbone, **cfg.model.kwargs)
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as e:
        raise ConfigError(f"{source}: its encoder does not match model={cfg.model}: {str(e)[:300]}") from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # features of NaN weights would fail deep inside the evaluation
        raise CheckpointError(f"{source}: the encoder's weights hold NaN or inf ({', '.join(bad[:5])}"
                              f"{', ...' if len(bad) > 5 else ''}): the run diverged or the file was edited")
    return backbone, feature_dim


def _linear_eval(args: argparse.Namespace, command: str) -> int:
    """The linear-evaluation protocol, holding the run folder's lock (rank 0) from start to end."""
    import os
    from pathlib import Path

    from mvssl_core import runlock

    run = Path(args.run)
    holder = run if run.is_dir() and int(os.environ.get("RANK", "0")) == 0 else None
    with runlock.hold(holder, command):
        return _linear_eval_locked(args, command)


def _linear_eval_locked(args: argparse.Namespace, command: str) -> int:
    from pathlib import Path

    import torch

    from mvssl_core import dist, results
    from mvssl_core.build import build_eval_sets, n_classes
    from mvssl_core.config import apply_overrides
    from mvssl_core.evaluate import LINEAR_EVAL_CHECKPOINT, linear_eval, linear_eval_train_transform
    from mvssl_core.runstate import CHECKPOINT_NAME, RESULTS_NAME, CheckpointError, checkpoint_config, load_checkpoint
    from mvssl_core.views import IMAGENET_NORMALIZE

    run = Path(args.run)
    ckpt, res_path = run / CHECKPOINT_NAME, run / RESULTS_NAME
    if not ckpt.is_file():
        raise FileNotFoundError(f"{run} holds no {CHECKPOINT_NAME}; pass the folder of a pre-training run")
    if not res_path.is_file():
        raise FileNotFoundError(f"{run} holds no {RESULTS_NAME}: its pre-training has not finished (resume it first)")
    finished = results.load_results(res_path)  # a broken results file fails now, not after 100 epochs
    state = load_checkpoint(ckpt)
    steps = finished.get("metrics", {}).get("steps")
    if isinstance(steps, int) and state["step"] != steps:
        raise CheckpointError(f"{ckpt} is at step {state['step']} but {res_path} records a run of {steps} steps: "
                              "the checkpoint is not the finished run's (edited, or written by another run)")
    values = to_dict(checkpoint_config(state, str(ckpt)))
    cfg = validate(from_dict(RunConfig, apply_overrides(values, [*args.overrides, f"device={args.device}"])))
    results_file = _linear_eval_results_file(cfg, values.get("results_file"), args.overrides, ckpt, res_path)
    protocol = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr))
                if v is not None}
    # an interrupted protocol resumes from its checkpoint, on the same encoder and data only
    protocol_ckpt = run / LINEAR_EVAL_CHECKPOINT
    source = {"run_step": state["step"], "model_sha256": state.get("sha256", {}).get("model"),
              "data.name": cfg.data.name, "data.root": cfg.data.root, "data.size": cfg.data.size}
    rt = dist.init_runtime(cfg)
    try:
        backbone, feature_dim = _load_backbone(state, cfg, ckpt)
        del state
        backbone.to(rt.device)
        if rt.channels_last:
            backbone.to(memory_format=torch.channels_last)
        normalize = cfg.data.view_kwargs.get("normalize", IMAGENET_NORMALIZE)
        train_set, val_set = build_eval_sets(
            cfg, train_transform=linear_eval_train_transform(cfg.data.size, normalize=normalize))
        main_rank = rt.rank == 0

        def _log(row: dict) -> None:
            if main_rank and not args.quiet:
                print(json.dumps({"linear_eval": row}), file=sys.stderr, flush=True)

        out = linear_eval(backbone, train_set, val_set, n_classes=n_classes(train_set), feature_dim=feature_dim,
                          device=rt.device, num_workers=cfg.num_workers, bf16=rt.bf16,
                          channels_last=rt.channels_last, seed=cfg.seed, log=_log, checkpoint=protocol_ckpt,
                          checkpoint_settings=source, **protocol)
    finally:
        dist.end_runtime(rt)
    if rt.rank != 0:
        return 0
    record = results.load_results(res_path)
    record["metrics"]["linear_eval"] = {**out, "data_root": cfg.data.root, "provenance": results.provenance(command)}
    results.write_results(res_path, record)
    if results_file is not None:
        results.write_results(results_file, record)
    protocol_ckpt.unlink(missing_ok=True)  # the results hold the protocol's numbers now
    print(json.dumps({"run": str(run), "top1": out["top1"], "top5": out["top5"]}))
    return 0


def _linear_eval_results_file(cfg: RunConfig, stored: str | None, overrides: list[str], ckpt: object,
                              res_path: object) -> str | None:
    """Where linear-eval writes besides the run's own results: a ``results_file`` named on the command line
    (resolved from the working directory), else the run's stored one if absolute and, when it exists, a copy
    of this run's record (never another run's file)."""
    from pathlib import Path

    from mvssl_core import results

    given = _names_results_file(None, overrides)
    if cfg.results_file is None:
        return None
    if given:
        return str(Path(cfg.results_file).resolve())
    _stored_results_file(stored, False, ckpt)
    target = Path(cfg.results_file)
    if target.exists() and results.load_results(target).get("config") != results.load_results(res_path).get("config"):
        raise results.ResultsError(
            f"the results_file {target} stored in {ckpt} holds another run's record (its config differs from "
            f"{res_path}); not overwriting it: --set results_file=PATH names another file, --set results_file=null "
            "writes none")
    return str(target)


LOG_FORMAT = "%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s"


def _configure_logging(quiet: bool = False) -> None:
    """Log records to stderr, each line with its time and the process's rank (``RANK`` of torchrun, else 0):
    ``mvssl_core``'s from level INFO (WARNING with ``--quiet``): the progress lines of a run under sbatch;
    other libraries' from WARNING (not, say, DDP's INFO notes on every rank). A program that configured
    logging itself (handlers on the root logger) keeps its configuration."""
    import logging
    import os

    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=LOG_FORMAT.format(rank=os.environ.get("RANK", "0")))
    logging.getLogger("mvssl_core").setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(quiet=getattr(args, "quiet", False))

    from mvssl_core.preempt import EXIT_STOPPED, Stopped
    from mvssl_core.results import ResultsError
    from mvssl_core.runstate import CheckpointError  # imports torch: after --help has been served
    command = shlex.join(["python", "-m", "mvssl_core", *argv])
    try:
        if args.command == "pretrain":
            return _pretrain(args, command)
        if args.command == "linear-eval":
            return _linear_eval(args, command)
        return _evaluate(args, command)
    except (ConfigError, CheckpointError, ResultsError, FileNotFoundError, FileExistsError) as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM / SIGUSR1: the checkpoint holds the last step; --resume continues
        print(f"{parser.prog} {args.command}: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except FloatingPointError as e:  # a diverged run: the last checkpoint is intact
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
