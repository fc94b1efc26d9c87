"""Samples per second per GPU of every method on ResNet-50, against the backbone(+teacher) limit, and the data
pipeline's rate from JPEG files (decoding + augmentation on the GPU vs the CPU pipeline in DataLoader workers).

    python scripts/bench_gpu.py                                # 10 methods, ResNet-50, 224 px, 256 / GPU, bf16
    python scripts/bench_gpu.py --data /imagenet/train --workers 8 --batch 512
    python scripts/bench_gpu.py --cpu --quick                  # smoke run on CPU (ResNet-18, 32 px, batch 4)

A sample is one image with all its views (2, or 2 + 6 / 2 + 4 with multi-crop): the rates are samples/s, not
views/s. A step is what the trainer does: forward of every view (the ImageNet recipes' crops: DINO and SwAV 2 x 224 + 6 x 96,
DeepCluster-v2 2 x 160 + 4 x 96), loss, backward, LARS step, the after-step update (EMA teacher),
under bf16 autocast with channels-last tensors, on synthetic views already on the device.
  - backbone(+teacher) limit: the same views through the backbone alone (forward, a trivial loss, backward, LARS
    step) and, for a method with an EMA teacher (BYOL, DINO), the teacher backbone's no-grad forward of the two
    global views, which the method cannot avoid either (:func:`limit_teacher`, :func:`limit_loss`);
  - heads + loss share: the method's step with the backbone replaced by a stub (a 3 -> d linear map of the
    images' mean colour) over its full step: what the heads, EMA teacher heads, losses and ER estimators cost.
    Issue 5 targets <= 3% for loss and estimators, and >= 90% of the backbone-only rate for the full step;
  - pipeline: JPEG files (``--data``, an ImageFolder; else synthetic 500 x 375 JPEGs written to a temporary
    folder) to the method's views on the device: bytes read by DataLoader workers, decoded and augmented on
    the GPU (``mvssl_core.gpu_views``), against PIL decoding + ``mvssl_core.views`` in the workers. One iterator
    (no worker restart at an epoch's end) first yields :func:`pipeline_warmup_batches` untimed batches: those
    were made while the workers started and the first batch initialised cuDNN / nvJPEG, so they come out at the
    consumer's speed, not the workers' (timing 20 batches after a single warm-up one overstated the rate by
    21-40 %, issue 13); then ``--pipeline-batches`` (default 100) are timed.
One process, one GPU: the rates are per GPU (an 8-GPU node with one data pipeline per GPU scales each by 8,
if the CPU cores feeding the workers suffice).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from mvssl_core import gpu_views, memory_plan, views
from mvssl_core.backbones import build_backbone
from mvssl_core.config import RunConfig, from_dict, read_yaml
from mvssl_core.data import ImageFolder
from mvssl_core.methods import METHODS, build_method
from mvssl_core.optim import LARS, param_groups

METHOD_HEADER = ("| method | samples/s | backbone(+teacher) limit samples/s | method / limit "
                 "| heads + loss share of a step | peak GiB at 512 / GPU, measured (planned) |")
RECIPE = {"simclr": "simclr", "byol": "byol", "dino": "dino", "swav": "swav", "deepcluster": "deepcluster"}


class FeatureStub(nn.Module):
    """Stands in for the backbone: ``(N, 3, H, W) -> (N, d)``, a linear map of each image's mean colour."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, feature_dim)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_config(name: str, size: int):
    """The ImageNet recipe of ``name`` (scripts/configs/imagenet) with its views at ``size`` px."""
    cfg = from_dict(RunConfig, read_yaml(memory_plan.RECIPES / f"{name}.yaml"))
    return replace(cfg, data=replace(cfg.data, size=size))


def view_sizes(name: str, size: int) -> list[int]:
    """The crops of ``name``'s ImageNet recipe, its global crops at ``size`` px (DINO 2 + 6, SwAV 2 + 6, DeepCluster-v2
    2 x 160 + 4 x 96 at 224: :func:`mvssl_core.memory_plan.crop_sides`)."""
    return memory_plan.crop_sides(recipe_config(name, size))


def peak_gib_at_512(device: torch.device, batch: int) -> float | None:
    """The peak of allocated memory since the last reset, scaled linearly to 512 samples (None off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 * 512 / batch


def make_method(name: str, backbone: nn.Module, dim: int, dataset_size: int) -> nn.Module:
    hyper = {"dataset_size": dataset_size} if name.startswith("deepcluster") else {}
    method = build_method(name, backbone, dim, **hyper)
    if name.startswith("deepcluster"):  # fill the bank and cluster once, so the step has targets
        with torch.no_grad():
            method.memory.copy_(nn.functional.normalize(torch.randn_like(method.memory), dim=-1))
            method.seen.fill_(True)
        method.start_epoch(0)
    return method


def limit_teacher(method: nn.Module, backbone: nn.Module) -> tuple[nn.Module | None, int]:
    """The teacher part of the limit: for a method with an EMA teacher (a ``teacher`` module: BYOL, DINO), a
    frozen copy of ``backbone`` and the number of views it sees (the 2 global ones); else ``(None, 0)``."""
    if not hasattr(method, "teacher"):
        return None, 0
    return copy.deepcopy(backbone).requires_grad_(False), 2


def limit_loss(backbone: nn.Module, teacher: nn.Module | None, views_: list[torch.Tensor],
               n_teacher: int) -> torch.Tensor:
    """The limit's step before backward: every view through ``backbone`` (a trivial loss of its features) and,
    with a teacher, its no-grad forward of the first ``n_teacher`` views."""
    if teacher is not None:
        with torch.no_grad():
            for v in views_[:n_teacher]:
                teacher(v)
    return sum(backbone(v).float().square().mean() for v in views_)


def pipeline_warmup_batches(workers: int, prefetch_factor: int = 2) -> int:
    """Untimed batches before a pipeline's timing: all that the workers prefetch while starting, and one more."""
    return workers * prefetch_factor + 1 if workers else 1


def time_steps(step, device: torch.device, steps: int, warmup: int) -> float:
    """Mean seconds of ``step()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_method(name: str, args, device: torch.device, autocast) -> dict[str, float]:
    """Step time of the method, of its backbone (+ teacher forward) alone on the same views, and of the method
    on a stub."""
    torch.manual_seed(0)
    gen = torch.Generator(device).manual_seed(1)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    views_ = [torch.randn(args.batch, 3, s, s, device=device, generator=gen).contiguous(memory_format=fmt)
              for s in view_sizes(name, args.size)]
    indices = torch.arange(args.batch, device=device)

    def runner(model: nn.Module, forward):
        model = model.to(device).to(memory_format=fmt).train()
        opt = LARS(param_groups(model, 1e-6), lr=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = forward(model)
            loss.backward()
            opt.step()
            if hasattr(model, "after_optimizer_step"):
                model.after_optimizer_step(0.5)
        return step

    backbone, dim = build_backbone(args.backbone, small_images=args.size < 64)
    dataset_size = max(4096, 4 * args.batch)
    method = make_method(name, backbone, dim, dataset_size)
    teacher, n_teacher = limit_teacher(method, backbone)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    full = time_steps(runner(method, lambda m: m(views_, 0.5, indices).loss), device, args.steps, args.warmup)
    peak = peak_gib_at_512(device, args.batch)
    del method
    if teacher is not None:
        teacher = teacher.to(device).to(memory_format=fmt).train()
    backbone_only = time_steps(runner(backbone, lambda b: limit_loss(b, teacher, views_, n_teacher)),
                               device, args.steps, args.warmup)
    stub = time_steps(runner(make_method(name, FeatureStub(dim), dim, dataset_size),
                             lambda m: m(views_, 0.5, indices).loss), device, args.steps, args.warmup)
    planned = (memory_plan.activation_mib(recipe_config(name, args.size)) * 512 / 1024
               if args.backbone == "resnet50" else None)
    return {"step_s": full, "backbone_s": backbone_only, "heads_loss_s": stub, "peak_gib_512": peak,
            "planned_gib_512": planned}


def write_jpegs(root: Path, n: int, height: int, width: int) -> Path:
    """``n`` smooth random colour JPEGs (quality 90) in 4 class folders."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        small = torch.rand(3, 8, 8, generator=gen)
        img = nn.functional.interpolate(small[None], size=(height, width), mode="bicubic", align_corners=False)[0]
        img = (img.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    return root


def bench_pipelines(root: Path, recipe: str, args, device: torch.device) -> dict[str, float]:
    """Samples (images) per second from files to the recipe's views on ``device``: GPU pipeline and CPU
    pipeline, timed over ``args.pipeline_batches`` batches after :func:`pipeline_warmup_batches` untimed ones."""
    cpu_views = views.build_views(recipe, args.size, **recipe_config(recipe, args.size).data.view_kwargs)
    gpu = gpu_views.GpuMultiView.from_cpu(cpu_views)
    gen = torch.Generator(device).manual_seed(0)
    warm = pipeline_warmup_batches(args.workers)
    kw = dict(batch_size=args.batch, drop_last=True, num_workers=args.workers, pin_memory=device.type == "cuda")
    out = {}

    def run(dataset, to_views, **more) -> float:
        # one iterator over enough samples for every batch: no epoch end, no worker restart in the timing
        sampler = RandomSampler(dataset, replacement=True, num_samples=args.batch * (warm + args.pipeline_batches))
        it = iter(DataLoader(dataset, sampler=sampler, **kw, **more))
        for _ in range(warm):  # workers started, their prefetched batches drained, cuDNN / nvJPEG initialised
            to_views(next(it))
        sync(device)
        n, start = 0, time.perf_counter()
        for _ in range(args.pipeline_batches):
            batch = next(it)
            n += len(batch[1])
            to_views(batch)
        sync(device)
        return n / (time.perf_counter() - start)

    def gpu_step(batch):
        data, _, _ = batch
        return gpu(gpu_views.decode_batch(data, device), generator=gen)

    out["gpu_pipeline_sps"] = run(gpu_views.JpegBytes(root), gpu_step, collate_fn=gpu_views.collate_bytes)
    cpu_set = ImageFolder(root, transform=cpu_views)
    out["cpu_pipeline_sps"] = run(cpu_set, lambda batch: [v.to(device, non_blocking=True) for v in batch[0]])
    return out


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on CPU (only with --quick: a smoke test)")
    parser.add_argument("--quick", action="store_true", help="ResNet-18, batch 4, 32 px, 1 step: a smoke run")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--backbone", help="default resnet50 (resnet18 with --quick)")
    parser.add_argument("--batch", type=int, help="images per GPU (default 256; 4 with --quick)")
    parser.add_argument("--size", type=int, help="global-crop side (default 224; 32 with --quick)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default 10; 1 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; 0 with --quick)")
    parser.add_argument("--data", type=Path, help="an ImageFolder of JPEGs for the pipeline (default: synthetic)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of each pipeline (default 8; 0 with --quick)")
    parser.add_argument("--pipeline-batches", type=int,
                        help="timed batches per pipeline, after the warm-up (default 100; 1 with --quick)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the data-pipeline measurement")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    args = parser.parse_args(argv)

    if args.cpu and not args.quick:
        parser.error("--cpu is a smoke mode only: pass --cpu --quick (CPU rates say nothing about a GPU node)")
    if not args.cpu and not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device found; it measures GPU throughput. "
              "For a CPU smoke run pass --cpu --quick.", file=sys.stderr)
        return 2
    q = args.quick
    args.backbone = args.backbone or ("resnet18" if q else "resnet50")
    args.batch = args.batch or (4 if q else 256)
    args.size = args.size or (32 if q else 224)
    args.steps = args.steps or (1 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if q else 3)
    args.workers = args.workers if args.workers is not None else (0 if q else 8)
    args.pipeline_batches = args.pipeline_batches or (1 if q else 100)
    device = torch.device("cpu" if args.cpu else "cuda")
    bf16 = not args.fp32 and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"{args.backbone}, batch {args.batch} per device, {args.size} px, {'bf16' if bf16 else 'fp32'}"
          f"{', channels-last' if args.channels_last else ''}, on {what}; torch {torch.__version__}; "
          f"{args.warmup} warm-up + {args.steps} timed step(s)")
    print()
    print(METHOD_HEADER)
    print("|---|---:|---:|---:|---:|---:|")
    step_rate = {}
    for name in args.methods:
        r = bench_method(name, args, device, autocast)
        step_rate[name] = args.batch / r["step_s"]
        print(f"| {name} | {args.batch / r['step_s']:.0f} | {args.batch / r['backbone_s']:.0f} "
              f"| {r['backbone_s'] / r['step_s']:.1%} | {r['heads_loss_s'] / r['step_s']:.1%} "
              f"| {_gib(r['peak_gib_512'])} ({_gib(r['planned_gib_512'])}) |", flush=True)
    if args.no_pipeline:
        return 0

    print()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data is not None:
            root, source = args.data, str(args.data)
        else:
            n = max(args.batch * 4, 8)
            h, w = (48, 64) if q else (375, 500)
            root = write_jpegs(Path(tmp), n, h, w)
            source = f"{n} synthetic {w}x{h} JPEGs"
        print(f"pipeline: {source}, {args.workers} DataLoader workers, batch {args.batch}, "
              f"{pipeline_warmup_batches(args.workers)} warm-up + {args.pipeline_batches} timed batches")
        print()
        print("| recipe | GPU decode + augment samples/s | CPU pipeline samples/s | GPU / CPU "
              "| GPU pipeline / slowest step |")
        print("|---|---:|---:|---:|---:|")
        for recipe in dict.fromkeys(RECIPE[m.removesuffix("_er")] for m in args.methods):
            r = bench_pipelines(root, recipe, args, device)
            slowest = min(v for m, v in step_rate.items() if RECIPE[m.removesuffix("_er")] == recipe)
            print(f"| {recipe} | {r['gpu_pipeline_sps']:.0f} | {r['cpu_pipeline_sps']:.0f} "
                  f"| {r['gpu_pipeline_sps'] / r['cpu_pipeline_sps']:.2f} "
                  f"| {r['gpu_pipeline_sps'] / slowest:.2f} |", flush=True)
    print()
    print("A pipeline / step ratio above 1 means the data keeps up with training, measured alone; the GPU pipeline "
          "shares the GPU with the step, so its cost adds to the step's (run it on a side stream to overlap).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
