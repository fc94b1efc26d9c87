"""Evaluation of frozen features: weighted kNN classifier and offline linear probe.

- :func:`knn_classify` is DINO's weighted k-nearest-neighbour classifier [0]: cosine similarity
  between L2-normalised features, the ``k = 20`` most similar training samples vote for their
  class with weight ``exp(similarity / T)``, ``T = 0.07``. It runs on the given device, in blocks
  of test rows whose similarities fit :data:`KNN_BLOCK_BYTES` (256 MiB).
- :func:`linear_probe` fits a linear classifier on standardised frozen features: scikit-learn's
  multinomial logistic regression (L-BFGS) for small sets, or, for large ones, a torch linear
  layer trained with the standard recipe (SGD with momentum 0.9 or LARS, cosine learning rate,
  mini-batches of 256) [1].
- :func:`extract_features` runs an encoder over a data set (eval mode, no gradient).
- :func:`linear_eval` is the standard linear-evaluation protocol [1, 2]: a linear classifier on the
  frozen encoder's features of *augmented* images (random resized crop + horizontal flip; the
  validation images resized and centre-cropped), trained for 100 epochs of SGD with Nesterov momentum
  and a cosine learning rate, scored by top-1 and top-5 accuracy. It runs on one process or, under
  ``torchrun``, on all of them (each rank encodes its slice of the global batch; the head's gradients
  are averaged), which is what ``scripts/linear_eval.sh`` launches. Given a checkpoint file it saves
  its state every epoch and resumes from it with the numbers of an uninterrupted run.
- :func:`evaluate_run` is the end of a pre-training run: kNN and linear-probe accuracy of its backbone on
  the evaluation splits of its configuration.

[0] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021,
    Sec. 4.1 and its ``eval_knn.py``.
[1] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
    Appendix B.6 (linear evaluation).
[2] Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, Appendix C.1 (linear evaluation on ImageNet).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from mvssl_core.config import RunConfig
    from mvssl_core.dist import Runtime

from mvssl_core import _checks

__all__ = [
    "extract_features",
    "knn_classify",
    "knn_block_rows",
    "KNN_BLOCK_BYTES",
    "knn_accuracy",
    "linear_probe",
    "linear_eval",
    "linear_eval_train_transform",
    "LINEAR_EVAL_CHECKPOINT",
    "topk_correct",
    "SKLEARN_MAX_SAMPLES",
    "evaluate_run",
]

SKLEARN_MAX_SAMPLES = 20_000
"""``linear_probe(backend="auto")`` uses scikit-learn up to this many training samples, torch beyond."""


def _features_and_labels(feats: object, labels: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    feats = torch.as_tensor(feats)
    labels = torch.as_tensor(labels)
    _checks.embeddings(feats.float(), name, min_samples=1)
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(f"{name} labels must have shape ({feats.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"{name} labels must be integers, got dtype {labels.dtype}")
    return feats, labels.long()


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``(N, D)`` (float32, CPU) and labels ``(N,)`` of ``dataset`` (items ``(image, label)``).

    The backbone runs in eval mode (BatchNorm uses its running statistics) and is put back in
    its previous mode. ``max_samples`` keeps a random subset (drawn with ``seed``) of that size.
    Images are loaded by ``num_workers`` DataLoader processes (started with ``worker_init_fn``) into
    pinned memory when ``device`` is CUDA; the order, and so the result, does not depend on them.
    """
    _checks.positive_int(batch_size, "batch_size")
    if max_samples is not None and max_samples < len(dataset):
        idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:max_samples]
        dataset = torch.utils.data.Subset(dataset, idx.sort().values.tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.device(device).type == "cuda",
                        worker_init_fn=worker_init_fn if num_workers > 0 else None)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        for images, y in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                f = backbone(images)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y).long())
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


KNN_BLOCK_BYTES = 256 * 2**20
"""Memory budget of one kNN similarity block: ``rows * N * 4`` bytes (float32 cosines against all N training
samples) stays within it, so ImageNet's N = 1.28M gives blocks of 52 test rows (256 MiB), not 5 GiB."""


def knn_block_rows(n_train: int, block_bytes: int = KNN_BLOCK_BYTES) -> int:
    """Test rows per kNN similarity block: the most whose ``(rows, n_train)`` float32 block fits ``block_bytes``
    (at least 1)."""
    _checks.positive_int(n_train, "n_train")
    _checks.positive_int(block_bytes, "block_bytes")
    return max(1, block_bytes // (4 * n_train))


@torch.no_grad()
def _knn_votes(train_features, train_labels, test_features, k, temperature, n_classes, chunk_size, device,
               block_bytes):
    """Validated inputs, then the DINO votes ``(m, C)`` of each block of test rows, in order (on ``device``)."""
    train_features, train_labels = _features_and_labels(train_features, train_labels, "train_features")
    test_features = torch.as_tensor(test_features)
    _checks.embeddings(test_features.float(), "test_features", min_samples=1)
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(
            f"test_features must have {train_features.shape[1]} columns like train_features, got {test_features.shape[1]}"
        )
    _checks.positive_int(k, "k")
    _checks.positive(temperature, "temperature")
    if (train_labels < 0).any():
        raise ValueError("train_labels must be >= 0 (drop unlabelled samples first)")
    c = int(train_labels.max()) + 1 if n_classes is None else _checks.positive_int(n_classes, "n_classes")
    rows = knn_block_rows(train_features.shape[0], block_bytes) if chunk_size is None else _checks.positive_int(
        chunk_size, "chunk_size")
    device = torch.device(device) if device is not None else train_features.device
    train = F.normalize(train_features.to(device).float(), dim=1)
    labels = train_labels.to(device)
    k = min(k, train.shape[0])
    for start in range(0, test_features.shape[0], rows):
        test = F.normalize(test_features[start : start + rows].to(device).float(), dim=1)
        sim = test @ train.T  # (m, N) cosines: m * N * 4 bytes
        top_sim, top_idx = sim.topk(k, dim=1)
        del sim
        weights = (top_sim / temperature).exp()  # cosines <= 1: exp(1 / 0.07) ~ 1.6e6, no overflow
        yield torch.zeros(test.shape[0], c, device=device).scatter_add_(1, labels[top_idx], weights)


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    n_classes: int | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    block_bytes: int = KNN_BLOCK_BYTES,
) -> torch.Tensor:
    """DINO's weighted kNN classifier [0]; returns the predicted classes ``(M,)`` (on the CPU).

    The test rows are classified in blocks; each row's result does not depend on the block it is in
    (ties: ``topk``'s choice among equal cosines, then the lowest class among equal votes).

    Args:
        train_features: (N, D) features of the labelled set (normalised here).
        train_labels: (N,) integer classes in [0, n_classes).
        test_features: (M, D) features to classify.
        k: neighbours (min(k, N) are used).
        temperature: T of the vote weights ``exp(cos / T)``.
        n_classes: number of classes (default: max label + 1).
        chunk_size: test rows per similarity block; default: as many as fit ``block_bytes``
            (:func:`knn_block_rows`).
        device: where the similarities are computed (default: where ``train_features`` are); the
            normalised training features are held there (``N * D * 4`` bytes) besides one block.
        block_bytes: memory budget of one ``(rows, N)`` float32 similarity block (default 256 MiB).
    """
    votes = _knn_votes(train_features, train_labels, test_features, k, temperature, n_classes, chunk_size, device,
                       block_bytes)
    return torch.cat([v.argmax(dim=1).cpu() for v in votes])


def knn_accuracy(train_features, train_labels, test_features, test_labels, **kwargs) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of :func:`knn_classify` on labelled test features."""
    test_features, test_labels = _features_and_labels(test_features, test_labels, "test_features")
    preds = knn_classify(train_features, train_labels, test_features, **kwargs)
    return float((preds == test_labels).float().mean())


def _standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    backend: str = "auto",
    C: float = 1.0,
    max_iter: int = 1000,
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Fit a linear classifier on standardised frozen features; report train and test top-1 accuracy.

    Args:
        train_features, train_labels: (N, D) features and (N,) classes (samples labelled -1 are dropped).
        test_features, test_labels: (M, D) and (M,).
        backend: "sklearn" (multinomial logistic regression, L-BFGS, inverse regularisation ``C``),
            "torch" (linear layer, ``epochs`` of SGD/LARS with momentum 0.9 and a cosine learning
            rate from ``lr``, cross-entropy), or "auto" (sklearn up to :data:`SKLEARN_MAX_SAMPLES`).
        C, max_iter: scikit-learn's parameters.
        epochs, lr, batch_size, optimizer ("sgd" or "lars"), weight_decay: the torch recipe.
        seed: seeds the torch initialisation and shuffling.
        device: where the torch head trains.

    Returns:
        ``{"train_top1": ..., "test_top1": ...}`` (fractions in [0, 1]) and ``"backend"``.
    """
    xtr, ytr = _features_and_labels(train_features, train_labels, "train_features")
    xte, yte = _features_and_labels(test_features, test_labels, "test_features")
    if xte.shape[1] != xtr.shape[1]:
        raise ValueError(f"test_features must have {xtr.shape[1]} columns like train_features, got {xte.shape[1]}")
    _checks.choice(backend, "backend", ("auto", "sklearn", "torch"))
    _checks.choice(optimizer, "optimizer", ("sgd", "lars"))
    keep = ytr >= 0
    xtr, ytr = xtr[keep].float(), ytr[keep]
    if len(torch.unique(ytr)) < 2:
        raise ValueError("train_labels must hold at least 2 classes")
    xtr, xte = _standardise(xtr, xte.float())
    if backend == "auto":
        backend = "sklearn" if xtr.shape[0] <= SKLEARN_MAX_SAMPLES else "torch"
    if backend == "sklearn":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=_checks.positive(C, "C"), max_iter=max_iter)
        clf.fit(xtr.numpy(), ytr.numpy())
        train_acc = float(clf.score(xtr.numpy(), ytr.numpy()))
        test_acc = float(np.mean(clf.predict(xte.numpy()) == yte.numpy()))
        return {"train_top1": train_acc, "test_top1": test_acc, "backend": "sklearn"}
    return _torch_probe(xtr, ytr, xte, yte, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                        weight_decay=weight_decay, seed=seed, device=device)


def _torch_probe(xtr, ytr, xte, yte, *, epochs, lr, batch_size, optimizer, weight_decay, seed, device) -> dict:
    from mvssl_core.optim import LARS, param_groups

    _checks.positive_int(epochs, "epochs")
    _checks.positive(lr, "lr")
    _checks.positive_int(batch_size, "batch_size")
    gen = torch.Generator().manual_seed(seed)
    n_classes = int(max(ytr.max(), yte.max())) + 1
    head = nn.Linear(xtr.shape[1], n_classes)
    with torch.no_grad():  # a seeded initialisation, independent of the global generator
        bound = 1 / math.sqrt(xtr.shape[1])
        head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
        head.bias.zero_()
    head = head.to(device)
    if optimizer == "lars":
        opt = LARS(param_groups(head, weight_decay), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = xtr.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    xtr_d, ytr_d = xtr.to(device), ytr.to(device)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(xtr_d[idx]), ytr_d[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        train_acc = float((head(xtr_d).argmax(1) == ytr_d).float().mean())
        test_acc = float((head(xte.to(device)).argmax(1).cpu() == yte).float().mean())
    return {"train_top1": train_acc, "test_top1": test_acc, "backend": "torch"}


def evaluate_backbone(
    backbone: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    *,
    knn: bool = True,
    linear: bool = True,
    k: int = 20,
    temperature: float = 0.07,
    max_train: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    seed: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """kNN and linear-probe top-1 accuracy of a frozen encoder (test split), as fractions in [0, 1].

    Features are extracted and the kNN similarities computed on ``device`` (blocks of at most
    :data:`KNN_BLOCK_BYTES`); images are loaded by ``num_workers`` processes.
    """
    kw = dict(batch_size=batch_size, device=device, num_workers=num_workers, bf16=bf16, channels_last=channels_last,
              worker_init_fn=worker_init_fn)
    xtr, ytr = extract_features(backbone, train_set, max_samples=max_train, seed=seed, **kw)
    xte, yte = extract_features(backbone, test_set, **kw)
    labelled = ytr >= 0
    xtr, ytr = xtr[labelled], ytr[labelled]
    out: dict[str, float] = {"n_train": int(xtr.shape[0]), "n_test": int(xte.shape[0])}
    if knn:
        out["knn_top1"] = knn_accuracy(xtr, ytr, xte, yte, k=k, temperature=temperature, device=device)
    if linear:
        probe = linear_probe(xtr, ytr, xte, yte, seed=seed, device=device)
        out["linear_top1"] = probe["test_top1"]
        out["linear_train_top1"] = probe["train_top1"]
    return out



# ------------------------------------------------------------------------------------------------
# the linear-evaluation protocol on augmented images


def linear_eval_train_transform(size: int, *, normalize=None):
    """The protocol's training view [1, 2]: random resized crop (scale 0.08-1) + horizontal flip, normalised."""
    from mvssl_core.views import IMAGENET_NORMALIZE, view_transform

    return view_transform(size, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0,
                          normalize=IMAGENET_NORMALIZE if normalize is None else normalize)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows of ``logits`` (N, C) have their label among the k largest, for each k (k > C counts as C)."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, kmax), best first
    hit = top == labels[:, None]
    return [int(hit[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


LINEAR_EVAL_CHECKPOINT = "linear_eval.pt"
"""File name of :func:`linear_eval`'s checkpoint in a run folder (``linear-eval`` resumes from it)."""

_LINEAR_EVAL_FORMAT = "mvssl-linear-eval/1"
_LINEAR_EVAL_KEYS = ("format", "settings", "epoch", "step", "head", "optimizer", "rng", "last")


def _save_linear_eval_checkpoint(path: Path, state: dict) -> None:
    from mvssl_core.atomic import atomic_write

    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def _load_linear_eval_checkpoint(path: Path, settings: dict) -> dict:
    """The checkpoint at ``path``, checked: its format, fields, and settings equal to ``settings``."""
    from mvssl_core.runstate import CheckpointError

    over = "; delete it to start the protocol over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, not a torch file
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"linear-evaluation checkpoint {path} cannot be read ({type(e).__name__}"
                              f"{': ' + first if first else ''}){over}") from e
    if not isinstance(state, dict) or state.get("format") != _LINEAR_EVAL_FORMAT:
        raise CheckpointError(f"{path} is not a linear-evaluation checkpoint (expected format "
                              f"{_LINEAR_EVAL_FORMAT!r}){over}")
    missing = [k for k in _LINEAR_EVAL_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"linear-evaluation checkpoint {path} lacks the fields {missing}{over}")
    stored = state["settings"]
    absent = object()
    differ = sorted(k for k in {*stored, *settings} if stored.get(k, absent) != settings.get(k, absent))
    if differ:
        def shown(d: dict, k: str) -> str:
            return repr(d[k]) if k in d else "(absent)"

        detail = "; ".join(f"{k}: {shown(stored, k)} there, {shown(settings, k)} now" for k in differ)
        raise CheckpointError(f"linear-evaluation checkpoint {path} was written with other settings ({detail}): "
                              f"rerun with its settings to resume it{over}")
    epoch, epochs = state["epoch"], settings["epochs"]
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        raise CheckpointError(f"linear-evaluation checkpoint {path}: field 'epoch' must be an integer in "
                              f"[1, {epochs}], got {epoch!r}{over}")
    if len(state["rng"]) != settings["world_size"]:
        raise CheckpointError(f"linear-evaluation checkpoint {path} holds {len(state['rng'])} RNG states for a "
                              f"world size of {settings['world_size']}{over}")
    return state


def linear_eval(
    backbone: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    *,
    n_classes: int,
    feature_dim: int,
    epochs: int = 100,
    batch_size: int = 1024,
    lr: float = 0.1,
    scale_lr: bool = True,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    bf16: bool = False,
    channels_last: bool = False,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    checkpoint_settings: dict | None = None,
) -> dict:
    """Train a linear head on the frozen encoder's features of augmented images; top-1 and top-5 on ``val_set``.

    The protocol of [1, 2]: the backbone in eval mode (BatchNorm running statistics) and without
    gradients; a linear layer (weights N(0, 0.01), bias 0) trained with cross-entropy by SGD with
    Nesterov momentum, the learning rate ``lr * batch_size / 256`` (``scale_lr``) annealed on a cosine
    to 0 over ``epochs`` epochs, no weight decay. ``train_set`` should yield augmented images
    (:func:`linear_eval_train_transform`), ``val_set`` centre crops (:func:`mvssl_core.views.eval_transform`).

    Under an initialised process group each rank encodes its slice of every global batch of
    ``batch_size`` (:class:`mvssl_core.sampler.GlobalBatchSampler`), the head's gradients are averaged
    over the ranks, and the validation set is split between the ranks with the counts summed, so
    every rank returns the same numbers. The incomplete last batch of each (shuffled) epoch is dropped.

    Args:
        backbone: encoder mapping images to (N, feature_dim) features (left unchanged).
        train_set, val_set: items ``(image, label)``, labels in [0, n_classes).
        n_classes, feature_dim: the head's shape.
        epochs, batch_size (global), lr, scale_lr, momentum, weight_decay: the recipe.
        device, num_workers, bf16, channels_last: where and how the encoder runs.
        seed: seeds the head's initialisation, the data order and the augmentations.
        log: called with a dict after every epoch (rank 0 may print it), after the checkpoint is written.
        checkpoint: a file (:data:`LINEAR_EVAL_CHECKPOINT` in a run folder) that rank 0 writes atomically
            every ``checkpoint_every`` epochs and after the last one: the head, the optimizer, the epoch and
            step (the cosine schedule's position), every rank's CPU RNG state (the augmentations of the
            main process) and the settings. If it exists, the protocol resumes from it and ends with the
            same numbers as an uninterrupted one (bitwise on the CPU); a file written with other settings
            (the recipe, ``n_classes``, ``feature_dim``, the data sizes, the world size, and
            ``checkpoint_settings``) raises :class:`mvssl_core.runstate.CheckpointError`. It is left in place:
            the caller deletes it once the results are stored.
        checkpoint_settings: more settings a resume must match (e.g. which encoder and data).

    Returns:
        ``{"top1", "top5", "train_top1", "train_loss"}`` (fractions in [0, 1]; train on augmented
        images, last epoch) and the recipe (``epochs``, ``batch_size``, ``lr``, ``n_train``,
        ``n_val``, ``world_size``).
    """
    from mvssl_core import dist
    from mvssl_core.optim import scaled_lr, warmup_cosine
    from mvssl_core.sampler import GlobalBatchSampler

    _checks.positive_int(n_classes, "n_classes", minimum=2)
    _checks.positive_int(feature_dim, "feature_dim")
    _checks.positive_int(epochs, "epochs")
    _checks.positive_int(batch_size, "batch_size")
    _checks.positive(lr, "lr")
    _checks.positive_int(checkpoint_every, "checkpoint_every")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    device = torch.device(device)
    world, rank = dist.world_size(), dist.rank()
    sampler = GlobalBatchSampler(len(train_set), batch_size, world_size=world, rank=rank, seed=seed)
    peak = scaled_lr(lr, batch_size) if scale_lr else float(lr)
    total = epochs * sampler.steps_per_epoch

    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(feature_dim, n_classes)
    with torch.no_grad():  # the same initialisation on every rank
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    head = head.to(device)
    opt = torch.optim.SGD(head.parameters(), lr=peak, momentum=momentum, nesterov=momentum > 0,
                          weight_decay=weight_decay)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": peak, "momentum": momentum,
                "weight_decay": weight_decay, "seed": seed, "n_classes": n_classes, "feature_dim": feature_dim,
                "n_train": len(train_set), "n_val": len(val_set), "world_size": world, **(checkpoint_settings or {})}
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resumed = None
    if checkpoint is not None:  # rank 0 reads it: the other ranks need not see the same file system
        found: list = [None, None]  # the state, or the error every rank raises
        if rank == 0:
            for tmp in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):  # of a process killed while writing
                tmp.unlink(missing_ok=True)
            try:
                found[0] = _load_linear_eval_checkpoint(checkpoint, settings) if checkpoint.exists() else None
            except Exception as e:
                found[1] = e
        dist.broadcast_objects(found, src=0)
        if found[1] is not None:
            raise found[1]
        resumed = found[0]
    was_training = backbone.training
    grads_were = [p.requires_grad for p in backbone.parameters()]
    backbone.eval().requires_grad_(False)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext

    def _features(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast():
            return backbone(images).float()

    pin = device.type == "cuda"
    torch.manual_seed(seed * 1000 + rank)  # augmentations in the main process; workers get the loader's seed
    step, out, first_epoch = 0, {}, 0
    if resumed is not None:
        head.load_state_dict(resumed["head"])
        opt.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["rng"][rank])
        step, out, first_epoch = resumed["step"], dict(resumed["last"]), resumed["epoch"]
        del resumed
    try:
        for epoch in range(first_epoch, epochs):
            sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                                generator=torch.Generator().manual_seed(seed * 1000 + epoch * 10 + rank))
            sums = torch.zeros(3, device=device)  # loss x n, correct, n
            for images, labels in loader:
                labels = labels.to(device, non_blocking=True)
                for g in opt.param_groups:
                    g["lr"] = warmup_cosine(step, total, 0, peak, 0.0)
                logits = head(_features(images))
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:  # the mean over the global batch: average the ranks' gradients
                    for p in head.parameters():
                        dist.all_reduce_(p.grad)
                        p.grad /= world
                opt.step()
                step += 1
                with torch.no_grad():
                    sums += torch.stack([loss.detach() * labels.shape[0],
                                         (logits.argmax(1) == labels).sum().float(),
                                         torch.tensor(float(labels.shape[0]), device=device)])
            dist.all_reduce_(sums)
            out = {"epoch": epoch + 1, "train_loss": float(sums[0] / sums[2]), "train_top1": float(sums[1] / sums[2])}
            if checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
                rng = dist.all_gather_objects(torch.get_rng_state())
                if rank == 0:
                    _save_linear_eval_checkpoint(checkpoint, {
                        "format": _LINEAR_EVAL_FORMAT, "settings": settings, "epoch": epoch + 1, "step": step,
                        "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
                        "optimizer": opt.state_dict(), "rng": rng, "last": out})
            if log is not None:
                log(out)

        head.eval()
        shard = torch.utils.data.Subset(val_set, list(range(rank, len(val_set), world)))
        counts = torch.zeros(3, device=device)  # top-1 correct, top-5 correct, n
        per_rank = max(1, batch_size // world)
        for images, labels in DataLoader(shard, batch_size=per_rank, num_workers=num_workers, pin_memory=pin):
            labels = labels.to(device, non_blocking=True)
            with torch.no_grad():
                c1, c5 = topk_correct(head(_features(images)), labels, (1, 5))
            counts += torch.tensor([c1, c5, labels.shape[0]], dtype=torch.float32, device=device)
        dist.all_reduce_(counts)
    finally:
        backbone.train(was_training)
        for p, g in zip(backbone.parameters(), grads_were):
            p.requires_grad_(g)
    n_val = int(counts[2])
    if n_val == 0:
        raise ValueError("val_set is empty")
    return {
        "top1": float(counts[0]) / n_val,
        "top5": float(counts[1]) / n_val,
        "train_top1": out["train_top1"],
        "train_loss": out["train_loss"],
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": peak,
        "n_train": sampler.steps_per_epoch * batch_size,
        "n_val": n_val,
        "world_size": world,
    }


def evaluate_run(cfg: RunConfig, backbone: nn.Module, rt: Runtime | None = None) -> dict[str, float]:
    """kNN and linear-probe accuracy of the backbone on the run's evaluation splits (empty if both off).

    Runs on ``rt.device`` (the CPU without ``rt``), loading images with ``cfg.num_workers`` processes.
    """
    from mvssl_core.build import build_eval_sets
    from mvssl_core.sampler import worker_init

    if not (cfg.eval.knn or cfg.eval.linear):
        return {}
    device = rt.device if rt is not None else torch.device("cpu")
    train_set, test_set = build_eval_sets(cfg)
    return evaluate_backbone(
        backbone, train_set, test_set, knn=cfg.eval.knn, linear=cfg.eval.linear, k=cfg.eval.k,
        temperature=cfg.eval.temperature, max_train=cfg.eval.max_train, batch_size=cfg.eval.batch_size,
        device=device, num_workers=cfg.num_workers, bf16=bool(rt and rt.bf16),
        channels_last=bool(rt and rt.channels_last), seed=cfg.seed, worker_init_fn=worker_init,
    )
