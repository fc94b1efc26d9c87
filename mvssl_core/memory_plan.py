"""How many samples a GPU holds at once: the gradient accumulation a recipe needs on a given GPU.

A ResNet-50 step keeps its activations for the backward pass; their size grows with the pixels of each crop.
Issue 13's review measured them on an H100 (torchvision ResNet-50, bf16 autocast, channels-last, forward and
backward): 42 MiB per 224-px crop and 7.8 MiB per 96-px crop, i.e. ``42 MiB x (side / 224)^2`` within 2 %.
A sample costs the sum over its crops, for the student's forward only (an EMA teacher runs without grad and
keeps nothing). At 512 samples per GPU (a global batch of 4096 on 8 GPUs) that is 42 GiB for SimCLR and BYOL
and 65 GiB for DINO's 2 + 6 crops: more than an 80 GB GPU leaves once weights, optimizer state, cuDNN
workspaces and the allocator's slack are counted, and far more than a 40 GB one.

:func:`plan_accumulate` picks the smallest ``accumulate`` (micro-batches per step, gradients summed; the
global batch and the learning rate unchanged) whose micro-batch fits :data:`USABLE_FRACTION` of the GPU's
memory. ``scripts/pretrain.sh`` applies it on GPU nodes unless the command line sets ``accumulate``, and prints
what it chose. It is not free of consequences: the global-batch estimators (InfoNCE's negatives, the KDE
entropy, Sinkhorn, the DINO centre) and global BatchNorm see one micro-batch (``batch_size / accumulate``
samples over all GPUs), not the whole batch; the choice is recorded in the run's ``config.yaml``, and a
resumed run keeps it. ``scripts/check_gpu.sh`` measures the peak memory on the device.

``python -m mvssl_core.memory_plan CONFIG --world N --gpu-mib M [key=value ...]`` prints
``accumulate micro_batch_per_gpu activation_mib``; ``--table`` prints the README's table of every ImageNet recipe.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mvssl_core.config import ConfigError, RunConfig, apply_overrides, from_dict, read_yaml

__all__ = ["ACTIVATION_MIB_224", "USABLE_FRACTION", "crop_sides", "activation_mib", "plan_accumulate", "main"]

ACTIVATION_MIB_224 = {"resnet50": 42.0}
"""Saved activations per 224-px crop, MiB (bf16, channels-last; issue 13's review, on an H100). Other
backbones have no entry: :func:`activation_mib` refuses them."""

USABLE_FRACTION = 0.75
"""The share of a GPU's memory planned for activations; the rest: weights and optimizer state (about 0.3 GiB
for ResNet-50 with its heads), cuDNN workspaces (``cudnn.benchmark``), NCCL buffers, the allocator's slack."""

RECIPES = Path(__file__).resolve().parent.parent / "scripts" / "configs" / "imagenet"


def crop_sides(cfg: RunConfig) -> list[int]:
    """The side in pixels of every crop of a sample under ``cfg``'s views (the trainer's own view pipeline)."""
    from mvssl_core.gpu_views import GpuMultiView
    from mvssl_core.views import build_views

    recipe = cfg.data.views or cfg.method.removesuffix("_er")  # each method's own views, as the trainer
    try:
        views = build_views(recipe, cfg.data.size, **cfg.data.view_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.view_kwargs: {e}") from None
    return [int(spec.size) for spec in GpuMultiView.from_cpu(views).specs]


def activation_mib(cfg: RunConfig) -> float:
    """Activations kept for the backward pass per sample, MiB: ``ACTIVATION_MIB_224 x sum (side / 224)^2``."""
    backbone = cfg.model.backbone
    if backbone not in ACTIVATION_MIB_224:
        raise ConfigError(f"model.backbone: no activation measurement for {backbone!r} "
                          f"(known: {sorted(ACTIVATION_MIB_224)}); set accumulate yourself")
    return ACTIVATION_MIB_224[backbone] * sum((side / 224) ** 2 for side in crop_sides(cfg))


def plan_accumulate(batch_size: int, world_size: int, per_sample_mib: float, gpu_mib: float, *,
                    at_least: int = 1, usable: float = USABLE_FRACTION) -> int:
    """The smallest ``accumulate >= at_least`` that splits the global batch evenly (``batch_size`` a multiple
    of ``world_size x accumulate``) and whose micro-batch per GPU keeps at most ``usable x gpu_mib`` MiB of
    activations.

    Raises:
        ValueError: a non-positive argument, or no accumulation fits (even one sample per GPU is too large).
    """
    for name, value in (("batch_size", batch_size), ("world_size", world_size), ("at_least", at_least)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value in (("per_sample_mib", per_sample_mib), ("gpu_mib", gpu_mib)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not 0 < usable <= 1:
        raise ValueError(f"usable must be in (0, 1], got {usable!r}")
    if batch_size % world_size:
        raise ValueError(f"batch_size ({batch_size}) must be a multiple of world_size ({world_size})")
    per_gpu = batch_size // world_size
    for accumulate in range(at_least, per_gpu + 1):
        if per_gpu % accumulate == 0 and (per_gpu // accumulate) * per_sample_mib <= usable * gpu_mib:
            return accumulate
    raise ValueError(f"no accumulation fits: one sample needs {per_sample_mib:.0f} MiB of activations, more than "
                     f"{usable:.0%} of the GPU's {gpu_mib:.0f} MiB")


def _config(path: str | Path, overrides: list[str]) -> RunConfig:
    return from_dict(RunConfig, apply_overrides(read_yaml(path), overrides))


def table(world_size: int = 8, gpus_gib: tuple[int, ...] = (80, 40)) -> str:
    """A Markdown table of every ImageNet recipe: crops, activations per sample and at ``batch / world_size``
    per GPU, and the ``accumulate`` :func:`plan_accumulate` chooses on ``world_size`` GPUs of each size."""
    head = (f"| recipe | crops (px) | MiB / sample | GiB at {{per_gpu}} / GPU | "
            + " | ".join(f"accumulate, {world_size} x {g} GB" for g in gpus_gib) + " |")
    rows = []
    for path in sorted(RECIPES.glob("*.yaml")):
        cfg = _config(path, [])
        sides, mib = crop_sides(cfg), activation_mib(cfg)
        per_gpu = cfg.batch_size // world_size
        counts = {s: sides.count(s) for s in sorted(set(sides), reverse=True)}
        crops = " + ".join(f"{n} x {s}" for s, n in counts.items())
        plans = [plan_accumulate(cfg.batch_size, world_size, mib, g * 1000 ** 3 / 2 ** 20, at_least=cfg.accumulate)
                 for g in gpus_gib]
        rows.append(f"| {path.stem} | {crops} | {mib:.0f} | {per_gpu * mib / 1024:.0f} | "
                    + " | ".join(str(a) for a in plans) + " |")
        head = head.format(per_gpu=per_gpu)
    return "\n".join([head, "|" + "---|" * (4 + len(gpus_gib)), *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvssl_core.memory_plan", description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", help="a recipe (YAML)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    parser.add_argument("--world", type=int, help="processes (GPUs) of the run")
    parser.add_argument("--gpu-mib", type=float, help="memory of the smallest GPU, MiB (nvidia-smi memory.total)")
    parser.add_argument("--table", action="store_true", help="print the table of the ImageNet recipes")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    if args.table:
        print(table())
        return 0
    if args.config is None or args.world is None or args.gpu_mib is None:
        parser.error("CONFIG, --world and --gpu-mib are required (or --table)")
    try:
        cfg = _config(args.config, args.overrides)
        mib = activation_mib(cfg)
        accumulate = plan_accumulate(cfg.batch_size, args.world, mib, args.gpu_mib, at_least=cfg.accumulate)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    micro = cfg.batch_size // (args.world * accumulate)
    print(accumulate, micro, round(micro * mib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
