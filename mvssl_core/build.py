"""Config -> parts: the trainer's data sets, model, optimizer and data pipeline, built from a :class:`RunConfig`.

A bad value of a part built from the config (a keyword the backbone, the views, the data set or the method
rejects) is a :class:`~mvssl_core.config.ConfigError` naming the config key.

GPU data pipeline (``data.gpu_pipeline``: true, or "auto" for an ImageFolder on CUDA,
:func:`use_gpu_pipeline`): the workers only read the JPEG files (:class:`mvssl_core.gpu_views.JpegBytes`);
each micro-batch is decoded and augmented on the device with the recipe of ``mvssl_core.views``, from a
generator seeded by (seed, step, micro-batch, rank): resuming stays exact, but the views then depend on the
world size.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mvssl_core.backbones import build_backbone
from mvssl_core.config import ConfigError, RunConfig
from mvssl_core.data import MultiViewDataset, build_dataset
from mvssl_core.dist import Runtime
from mvssl_core.gpu_views import GpuMultiView, JpegBytes, TensorImages
from mvssl_core.methods import build_method
from mvssl_core.optim import LARS, param_groups
from mvssl_core.views import IMAGENET_NORMALIZE, build_views, eval_transform

__all__ = [
    "build_train_set",
    "build_eval_sets",
    "build_model",
    "build_optimizer",
    "use_gpu_pipeline",
    "n_classes",
]

# recipe of each method family's views
_METHOD_VIEWS = {"simclr": "simclr", "byol": "byol", "dino": "dino", "swav": "swav", "deepcluster": "deepcluster"}


def _split(cfg: RunConfig, which: str) -> str | None:
    name = cfg.data.name
    if which == "train":
        if cfg.data.split is not None:
            return cfg.data.split
        return "train+unlabeled" if name == "stl10" else "train"
    if which == "eval_train":
        return cfg.data.eval_train_split or "train"
    return cfg.data.eval_split or ("val" if name == "imagefolder" else "test")


def _dataset_kwargs(cfg: RunConfig) -> dict:
    kw: dict[str, Any] = {"root": cfg.data.root, "download": cfg.data.download}
    if cfg.data.name in ("digits", "shapes"):
        kw["size"] = cfg.data.size
    if cfg.data.name == "shapes" and cfg.data.n is not None:
        kw["n"] = cfg.data.n
    kw.update(cfg.data.kwargs)
    return kw


def build_train_set(cfg: RunConfig, gpu_pipeline: bool = False) -> Dataset:
    """The pre-training data set with the method's views, seeded per item.

    With ``gpu_pipeline``, a :class:`~mvssl_core.gpu_views.JpegBytes` of undecoded files (an ImageFolder) or a
    :class:`~mvssl_core.gpu_views.TensorImages` of uint8 tensors (digits, shapes), whose ``views`` the training
    loop applies on the device, a batch at a time.
    """
    recipe = cfg.data.views or _METHOD_VIEWS[cfg.method.removesuffix("_er")]
    with _config_errors("data.view_kwargs"):
        views = build_views(recipe, cfg.data.size, **cfg.data.view_kwargs)
    if gpu_pipeline and cfg.data.name == "imagefolder":
        split = _split(cfg, "train")
        root = Path(cfg.data.root) if split is None else Path(cfg.data.root) / split
        return JpegBytes(root, views=GpuMultiView.from_cpu(views))
    with _config_errors("data"):
        base = build_dataset(cfg.data.name, split=_split(cfg, "train"), **_dataset_kwargs(cfg))
    if gpu_pipeline:  # digits, shapes: uint8 tensors in memory, views made in batches on the device
        return TensorImages(base, views=GpuMultiView.from_cpu(views))
    return MultiViewDataset(base, views, seed=cfg.seed)


@contextlib.contextmanager
def _config_errors(key: str) -> Iterator[None]:
    """Report a bad keyword argument or value of a part built from the config as a ConfigError on ``key``."""
    try:
        yield
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: {e}") from e


def build_eval_sets(cfg: RunConfig, name: str | None = None,
                    train_transform: Callable | None = None) -> tuple[Dataset, Dataset]:
    """The (train, test) sets of the offline evaluation, with the evaluation transform.

    ``train_transform`` replaces it on the training split (the linear-evaluation protocol augments).
    """
    t = eval_transform(cfg.data.size, normalize=cfg.data.view_kwargs.get("normalize", IMAGENET_NORMALIZE))
    kw = _dataset_kwargs(cfg)
    name = name or cfg.data.name
    train_split, test_split = _split(cfg, "eval_train"), _split(cfg, "eval")
    train_set = build_dataset(name, split=train_split, transform=t if train_transform is None else train_transform, **kw)
    test_set = build_dataset(name, split=test_split, transform=t, **kw)
    # Each split numbers its own sorted classes: with other class folders, a label would name another class
    # in the other split and every accuracy would be scored against shifted labels.
    train_classes, test_classes = getattr(train_set, "classes", None), getattr(test_set, "classes", None)
    if train_classes is not None and test_classes is not None and list(train_classes) != list(test_classes):
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ConfigError(
            f"data.root {cfg.data.root}: the evaluation splits {train_split!r} and {test_split!r} must hold the "
            f"same classes (one label index for both); only in {train_split!r}: {only_train or 'none'}; only in "
            f"{test_split!r}: {only_test or 'none'}")
    return train_set, test_set


def use_gpu_pipeline(cfg: RunConfig, rt: Runtime) -> bool:
    """Whether the run's views are drawn on the device (``data.gpu_pipeline``; "auto": an ImageFolder on CUDA)."""
    if cfg.data.gpu_pipeline == "auto":
        return rt.device.type == "cuda" and cfg.data.name == "imagefolder"
    return bool(cfg.data.gpu_pipeline)


def _seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: RunConfig, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
    """``optim.name``'s optimizer (LARS, SGD or AdamW) over ``model``'s parameter groups, at ``peak_lr``."""
    groups = param_groups(model, cfg.optim.weight_decay)
    if cfg.optim.name == "lars":
        return LARS(groups, lr=peak_lr, momentum=cfg.optim.momentum)
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr, momentum=cfg.optim.momentum)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=(cfg.optim.momentum, 0.999))


def n_classes(dataset: Dataset) -> int:
    """The number of classes of a data set (of the one inside a multi-view or in-memory training set)."""
    base = dataset.dataset if isinstance(dataset, (MultiViewDataset, TensorImages)) else dataset
    classes = getattr(base, "classes", None)
    if classes is not None:
        return len(classes)
    return int(max(getattr(base, "targets", [0]))) + 1


def build_model(cfg: RunConfig, dataset_size: int, distributed: bool = False) -> nn.Module:
    """The method of ``cfg`` around its backbone, initialised from ``cfg.seed`` (seeds torch, numpy, random).

    Every rank builds the same model (DDP also broadcasts rank 0's parameters). DeepCluster gets
    ``dataset_size`` unless ``hyper`` sets it.
    """
    _seed_everything(cfg.seed)
    with _config_errors("model.kwargs"):
        backbone, feature_dim = build_backbone(cfg.model.backbone, **cfg.model.kwargs)
    backbone.feature_dim = feature_dim
    hyper = dict(cfg.hyper)
    if cfg.method.startswith("deepcluster"):
        hyper.setdefault("dataset_size", dataset_size)
    with _config_errors("hyper"):  # an unknown hyper-parameter or a value the method rejects
        return build_method(cfg.method, backbone, feature_dim, distributed=distributed, **hyper)
