"""The ImageNet recipes (scripts/configs/imagenet/*.yaml) against the papers and official code they cite.

Each test reads a YAML into a :class:`~mvssl_core.config.RunConfig`, checks the values the sources
give, and builds on CPU what it can: the views (read back with ``gpu_views.ViewSpec``, applied to one
image), the heads at tiny width with the recipe's other fields, one training step.

Sources: DINO's README and main_dino.py (facebookresearch/dino), DeepCluster-v2's 400-epoch script
(facebookresearch/swav, scripts/deepclusterv2_400ep_pretrain.sh), SimCLR's official projection head
(google-research/simclr, model_util.projection_head), and the ER paper's recipe
(shared/reference/facts.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from mvssl_core import heads
from mvssl_core.backbones import build_backbone
from mvssl_core.config import load_config
from mvssl_core.gpu_views import GpuMultiView, ViewSpec
from mvssl_core.methods import build_method
from mvssl_core.optim import scaled_lr
from mvssl_core.views import build_views

CONFIGS = Path(__file__).resolve().parents[1] / "scripts" / "configs" / "imagenet"
METHODS = ["simclr", "simclr_er", "byol", "byol_er", "dino", "dino_er", "swav", "swav_er", "deepcluster",
           "deepcluster_er"]


def recipe(method: str):
    return load_config(CONFIGS / f"{method}.yaml")


def crop_specs(cfg) -> list[ViewSpec]:
    """The recipe's views, as the trainer builds them, read back view by view."""
    views = build_views(cfg.data.views, cfg.data.size, **cfg.data.view_kwargs)
    return [ViewSpec.from_transform(t) for t in views.transforms]


def tiny_backbone():
    return build_backbone("convnet", widths=[4, 8])


# ------------------------------------------------------------------------------------------------
# every recipe: the ER paper's training set-up


@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_is_the_er_papers_setup(method):
    cfg = recipe(method)
    assert (cfg.model.backbone, cfg.epochs, cfg.batch_size, cfg.accumulate) == ("resnet50", 400, 4096, 1)
    assert cfg.optim.name == "lars" and cfg.optim.warmup_epochs == 10 and cfg.optim.scale_lr
    assert cfg.data.size == 224  # the evaluation's side, whatever the training crops
    text = (CONFIGS / f"{method}.yaml").read_text()
    assert "[0] Rodriguez-Galvez et al." in text and "[1] " in text  # the sources are stated


@pytest.mark.parametrize("method", METHODS)
def test_every_recipe_makes_its_views_on_the_gpu_of_a_cuda_run(method):
    """``data.gpu_pipeline: auto``: on the device under CUDA (CPU workers would need 50-115 cores per GPU,
    issue 13), the per-item CPU views on CPU; the recipe's views exist as batched device views."""
    from mvssl_core.build import use_gpu_pipeline
    from mvssl_core.dist import Runtime

    cfg = recipe(method)
    assert cfg.data.gpu_pipeline == "auto"
    on = {d: use_gpu_pipeline(cfg, Runtime(torch.device(d), 0, 1, False, False, False, False)) for d in ("cuda", "cpu")}
    assert on == {"cuda": True, "cpu": False}
    views = build_views(cfg.data.views or method.removesuffix("_er"), cfg.data.size, **cfg.data.view_kwargs)
    assert len(GpuMultiView.from_cpu(views).specs) == len(views.transforms) >= 2


@pytest.mark.parametrize("method", ["simclr", "byol", "dino", "swav", "deepcluster"])
def test_er_variant_keeps_the_views_optimiser_and_heads(method):
    base, er = recipe(method), recipe(f"{method}_er")
    assert er.data == base.data and er.optim == base.optim and er.model == base.model
    assert {k: v for k, v in er.hyper.items() if k in base.hyper} == base.hyper


# ------------------------------------------------------------------------------------------------
# DINO, ResNet-50: crops (0.14, 1) + 6 x (0.05, 0.14), BN in the head, learnt last-layer gain


@pytest.mark.parametrize("method", ["dino", "dino_er"])
def test_dino_resnet50_crops(method):
    cfg = recipe(method)
    assert cfg.data.views == "dino"
    assert tuple(cfg.data.view_kwargs["global_scale"]) == (0.14, 1.0)
    assert tuple(cfg.data.view_kwargs["local_scale"]) == (0.05, 0.14)
    specs = crop_specs(cfg)
    assert [s.size for s in specs] == [224, 224] + [96] * 6
    assert [s.scale for s in specs] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6
    assert [s.size for s in GpuMultiView.from_cpu(build_views("dino", 224, **cfg.data.view_kwargs)).specs] == \
        [224, 224] + [96] * 6


@pytest.mark.parametrize("method", ["dino", "dino_er"])
def test_dino_resnet50_head_and_schedules(method):
    cfg = recipe(method)
    h = cfg.hyper
    assert h["head"]["bn"] is True and h["head"]["norm_last_layer"] is False
    assert (h["head"]["hidden"], h["head"]["bottleneck"], h["head"]["out"], h["head"]["layers"]) == (2048, 256, 65536, 3)
    assert (h["teacher_temperature_start"], h["teacher_temperature_end"]) == (0.04, 0.07)
    assert h["teacher_temperature_warmup"] * cfg.epochs == pytest.approx(30)
    assert (h["base_momentum"], h["final_momentum"], h["student_temperature"]) == (0.996, 1.0, 0.1)
    # the head the method builds: BN after each hidden layer, a trainable weight-norm gain
    backbone, dim = tiny_backbone()
    small = {**h, "head": {**h["head"], "hidden": 16, "bottleneck": 8, "out": 32}}
    model = build_method(method, backbone, dim, **small)
    bns = [m for m in model.head.mlp if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 2 and all(m.num_features == 16 for m in bns)
    assert model.head.last_layer.gain.requires_grad
    assert not model.teacher["head"].last_layer.gain.requires_grad  # the teacher is an EMA, never trained


# ------------------------------------------------------------------------------------------------
# DeepCluster-v2, 400 epochs: 2 x 160 (0.08, 1) + 4 x 96 (0.05, 0.14), 3 x 3000, tau 0.1, frozen prototypes


@pytest.mark.parametrize("method", ["deepcluster", "deepcluster_er"])
def test_deepcluster_400ep_crops(method):
    cfg = recipe(method)
    specs = crop_specs(cfg)
    assert [s.size for s in specs] == [160, 160, 96, 96, 96, 96]
    assert [s.scale for s in specs] == [(0.08, 1.0)] * 2 + [(0.05, 0.14)] * 4
    assert {s.blur_p for s in specs} == {0.5} and {s.jitter_p for s in specs} == {0.8}  # SwAV's colour and blur
    image = torch.randint(0, 256, (3, 200, 240), dtype=torch.uint8)
    out = build_views(cfg.data.views, cfg.data.size, **cfg.data.view_kwargs)(image)
    assert [tuple(v.shape) for v in out] == [(3, 160, 160)] * 2 + [(3, 96, 96)] * 4


@pytest.mark.parametrize("method", ["deepcluster", "deepcluster_er"])
def test_deepcluster_400ep_heads_and_frozen_prototypes(method):
    cfg = recipe(method)
    h = cfg.hyper
    assert h["prototypes"] == {"n_prototypes": 3000, "heads": 3}
    assert (h["temperature"], h["n_global"], h["kmeans_iters"]) == (0.1, 2, 10)
    assert h["projector"]["hidden"] == 2048 and h["projector"]["out"] == 128
    assert h["freeze_prototypes"] is True
    assert scaled_lr(cfg.optim.lr, cfg.batch_size) == pytest.approx(4.8)
    assert cfg.optim.final_lr * 4.8 == pytest.approx(0.0048) and cfg.optim.weight_decay == 1e-6
    # one step at tiny size with the recipe's crops (scaled down): the prototypes get no gradient
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    small = {**h, "projector": {**h["projector"], "hidden": 16, "out": 8},
             "prototypes": {"n_prototypes": 4, "heads": 3}}
    model = build_method(method, backbone, dim, dataset_size=8, **small)
    kw = {**cfg.data.view_kwargs, "global_size": 16, "blur": False}
    views = build_views(cfg.data.views, 24, **kw)
    assert len(views) == 6
    images = torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8)
    batch = [torch.stack(vs) for vs in zip(*(views(im) for im in images))]
    assert [tuple(b.shape[-2:]) for b in batch] == [(16, 16)] * 2 + [(10, 10)] * 4
    indices = torch.arange(8)
    model.start_epoch(0)
    if getattr(model, "prefill", False):  # the trainer's pass over the data before the first step
        model.fill_memory_(batch, indices)
        model.start_epoch(0)
    out = model(batch, 0.0, indices)
    out.loss.backward()
    assert out.loss.item() != 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.prototypes.parameters())
    assert any(p.grad is not None and p.grad.any() for p in model.projector.parameters())


# ------------------------------------------------------------------------------------------------
# SimCLR: the projector's output is batch-normalised (official TensorFlow code)


def test_simclr_projector_ends_in_batchnorm():
    assert heads.SIMCLR_PROJECTOR.last_bn is True
    mlp = heads.build_mlp(512, heads.SIMCLR_PROJECTOR)
    assert isinstance(mlp[-1], nn.BatchNorm1d) and mlp[-1].num_features == 128
    assert isinstance(mlp[-2], nn.Linear) and mlp[-2].bias is None  # the BN's shift replaces the bias


@pytest.mark.parametrize("method", ["simclr", "simclr_er"])
def test_simclr_recipe_keeps_the_last_bn(method):
    cfg = recipe(method)
    assert cfg.hyper["projector"] == dataclasses.asdict(heads.SIMCLR_PROJECTOR)
    backbone, dim = tiny_backbone()
    small = {**cfg.hyper, "projector": {**cfg.hyper["projector"], "hidden": 16, "out": 8}}
    model = build_method(method, backbone, dim, **small)
    assert isinstance(model.projector[-1], nn.BatchNorm1d)


# ------------------------------------------------------------------------------------------------
# the others: the values their sources give


def test_byol_recipe():
    for method in ("byol", "byol_er"):
        cfg = recipe(method)
        assert cfg.optim.weight_decay == 1.5e-6 and scaled_lr(cfg.optim.lr, cfg.batch_size) == pytest.approx(3.2)
        assert cfg.optim.final_lr == 0.0
        assert (cfg.hyper["base_momentum"], cfg.hyper["final_momentum"]) == (0.996, 1.0)
        assert cfg.hyper["projector"] == dataclasses.asdict(heads.BYOL_PROJECTOR)
        assert cfg.hyper["predictor"] == dataclasses.asdict(heads.BYOL_PREDICTOR)
    assert recipe("byol_er").hyper["kappa"] == 10.0


def test_swav_recipe():
    for method in ("swav", "swav_er"):
        cfg = recipe(method)
        specs = crop_specs(cfg)
        assert [s.size for s in specs] == [224] * 2 + [96] * 6
        assert [s.scale for s in specs] == [(0.14, 1.0)] * 2 + [(0.05, 0.14)] * 6
        h = cfg.hyper
        assert h["prototypes"] == {"n_prototypes": 3000, "heads": 1}
        assert (h["temperature"], h["epsilon"], h["sinkhorn_iters"], h["queue_length"]) == (0.1, 0.05, 3, 0)
        assert h["freeze_prototypes"] * cfg.epochs == pytest.approx(1)  # 313 iterations: one epoch
        assert cfg.optim.final_lr * 4.8 == pytest.approx(0.0048)


def test_simclr_er_estimator_and_kappa():
    h = recipe("simclr_er").hyper
    assert (h["kappa"], h["estimator"]) == (10.0, "joe")
