"""Command line: ``python -m mvssl_core pretrain ...`` and ``python -m mvssl_core evaluate ...``.

Pre-train (defaults are those of :class:`mvssl_core.config.RunConfig`; a config file, then the
flags, then ``--set`` overrides change them, in that order)::

    python -m mvssl_core pretrain --method byol_er --data digits --steps 200 --out runs/byol_er
    python -m mvssl_core pretrain --config my_run.yaml --set optim.lr=0.1 --set hyper.temperature=0.2
    python -m mvssl_core pretrain --out runs/byol_er --resume          # continue from runs/byol_er/checkpoint.pt
    torchrun --nproc_per_node 4 -m mvssl_core pretrain --config ...     # DDP, global-batch estimators

Evaluate a checkpoint's encoder (kNN and linear probe on frozen features)::

    python -m mvssl_core evaluate --checkpoint runs/byol_er/checkpoint.pt [--data digits] [--results out.json]

Errors in the arguments, the configuration, the data or a checkpoint end the program with a one-line
message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from mvssl_core.config import ConfigError, RunConfig, from_dict, load_config, to_dict, validate

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvssl_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{pretrain,evaluate}")

    p = sub.add_parser("pretrain", help="pre-train a method (CPU, or several processes under torchrun)")
    p.add_argument("--config", help="YAML file of config keys (see mvssl_core/config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.1 (repeatable; the value is read as YAML)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--method", help="method name, e.g. simclr, byol_er, dino, swav_er, deepcluster")
    p.add_argument("--data", help="data set: digits, shapes, cifar10, cifar100, stl10, imagefolder")
    p.add_argument("--size", type=int, help="image side in px")
    p.add_argument("--backbone", help="resnet18, resnet50 or convnet")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="the global batch")
    p.add_argument("--accumulate", type=int, help="gradient-accumulation micro-batches per step")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="the run's folder")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--num-workers", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")

    e = sub.add_parser("evaluate", help="kNN and linear probe of a checkpoint's frozen encoder")
    e.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by pretrain")
    e.add_argument("--data", help="data set to evaluate on (default: the run's)")
    e.add_argument("--size", type=int, help="image side in px (default: the run's)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the run (e.g. eval.k=10, data.root=/data)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--results", help="also write a results file (JSON) here")
    return parser


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
    import yaml

    from mvssl_core import train as train_mod

    overrides = _flag_overrides(args) + list(args.overrides)
    base = None
    if args.resume:
        # the checkpoint's configuration is the base; the flags may only change what does not alter the result
        probe_cfg = load_config(args.config, overrides)
        ckpt = probe_cfg.run_dir() / train_mod.CHECKPOINT_NAME
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; pass the run's --out, or start without --resume")
        base = to_dict(train_mod.checkpoint_config(train_mod.load_checkpoint(ckpt), str(ckpt)))
        base["out"] = str(probe_cfg.run_dir())
    elif args.method is None and args.config is None and not any(o.startswith("method=") for o in args.overrides):
        raise ConfigError("choose a method: --method NAME (e.g. --method simclr), or a --config file that sets one")
    cfg = load_config(args.config, overrides, base=base)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    record = train_mod.train(cfg, resume=args.resume, command=command)
    if record is not None:
        final = record["metrics"]["final"]
        print(json.dumps({"run": str(cfg.run_dir()), **final}))
    return 0


def _evaluate(args: argparse.Namespace, command: str) -> int:
    import torch

    from mvssl_core import results
    from mvssl_core.backbones import build_backbone
    from mvssl_core.config import apply_overrides
    from mvssl_core.train import Runtime, checkpoint_config, evaluate_run, load_checkpoint

    state = load_checkpoint(args.checkpoint)
    values = to_dict(checkpoint_config(state, args.checkpoint))
    extra = list(args.overrides)
    if args.data is not None:
        extra.append(f"data.name={args.data}")
    if args.size is not None:
        extra.append(f"data.size={args.size}")
    cfg = validate(from_dict(RunConfig, apply_overrides(values, extra)))
    backbone, _ = build_backbone(cfg.model.backbone, **cfg.model.kwargs)
    prefix = "backbone."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    try:
        backbone.load_state_dict(weights)
    except RuntimeError as e:
        raise ConfigError(f"{args.checkpoint}: its encoder does not match model={cfg.model}: {str(e)[:300]}") from None
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    backbone.to(device)
    rt = Runtime(device, 0, 1, False, cuda, cuda, False)
    final = evaluate_run(cfg, backbone, rt)
    print(json.dumps({"checkpoint": str(args.checkpoint), "step": int(state["step"]), **final}))
    if args.results:
        record = {
            "schema": results.SCHEMA,
            "method": cfg.method,
            "dataset": cfg.data.name,
            "config": to_dict(cfg),
            "seed": cfg.seed,
            "provenance": results.provenance(command=command),
            "metrics": {"checkpoint": str(args.checkpoint), "step": int(state["step"]), "final": final},
        }
        results.write_results(args.results, record)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    from mvssl_core.results import ResultsError
    from mvssl_core.train import CheckpointError  # imports torch: after --help has been served
    command = shlex.join(["python", "-m", "mvssl_core", *argv])
    try:
        if args.command == "pretrain":
            return _pretrain(args, command)
        return _evaluate(args, command)
    except (ConfigError, CheckpointError, ResultsError, FileNotFoundError, FileExistsError) as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged run: the last checkpoint is intact
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
