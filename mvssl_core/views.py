"""Multi-view augmentation pipelines (torchvision.transforms.v2): SimCLR, BYOL, DINO and SwAV recipes.

A pipeline is a ``MultiView``: called on one image (PIL, ndarray or ``(C, H, W)`` tensor, uint8 or float
in [0, 1]), it returns a list of float32 ``(C, s, s)`` tensors, one per view. The recipes follow the
papers at 224 px and are scaled to the image size: crop sizes, and the Gaussian-blur kernel (~10% of
the side, odd). Blur is skipped for images under ``BLUR_MIN_SIZE`` px by default, as SimCLR does on
CIFAR-10 ([0], Appendix B.9).

Randomness and seeding. v2 transforms draw from torch's *global* CPU generator (``torch.rand``,
``torch.randint``, ``torch.randperm``); they take no generator argument. So:
  - in the main process (``num_workers=0``), ``torch.manual_seed(s)`` fixes the views;
  - in DataLoader workers, each worker's global generator is seeded with ``base_seed + worker_id``, where
    ``base_seed`` is drawn from the DataLoader's ``generator`` when the iterator is created; passing
    ``generator=torch.Generator().manual_seed(s)`` fixes the views for a *given* ``num_workers``;
  - ``seeded(seed)`` below (used by ``data.MultiViewDataset(seed=...)``) runs a pipeline under a private
    seed, restoring the global state afterwards: the views of item i at epoch e are then the same
    whatever the worker count, process count, or order in which items are drawn (what exact resume and
    1-vs-N-process equality need).

[0] Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML 2020 (Appendix A: colour distortion of strength s, blur 10% of the side).
[1] Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020 (Table 6: asymmetric blur and solarisation).
[2] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021
    (multi-crop: 2 global crops, scale (0.4, 1), 224 px; local crops, scale (0.05, 0.4), 96 px).
[3] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
    (SwAV), NeurIPS 2020 (multi-crop 2x224 at scale (0.14, 1) + 6x96 at (0.05, 0.14)); DeepCluster-v2
    in the same work uses the same crops for 800 epochs, and 2x160 at (0.08, 1) + 4x96 at (0.05, 0.14)
    for 400 (facebookresearch/swav, scripts/deepclusterv2_{800,400}ep_pretrain.sh).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from numbers import Real

import torch
from torchvision.transforms import v2

from mvssl_core import _checks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_NORMALIZE = (IMAGENET_MEAN, IMAGENET_STD)
BLUR_MIN_SIZE = 64  # below this side (px), "auto" blur is off
REFERENCE_SIZE = 224  # the recipes' global-crop size

Normalize = tuple[Sequence[float], Sequence[float]] | None


def _reals(value: object, name: str, n: int | None, what: str) -> tuple[float, ...]:
    """A list or tuple of ``n`` (any number >= 1 when None) finite real numbers; bools and strings refused."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    if (n is not None and len(value) != n) or len(value) < 1:
        raise ValueError(f"{name} must be {what}, got {len(value)} value(s): {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"{name} must be {what}, got an entry {v!r} ({type(v).__name__})")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be {what}, got a non-finite entry in {value!r}")
    return tuple(float(v) for v in value)


def _scale(scale: object, name: str) -> tuple[float, float]:
    """A crop's area fraction range: two numbers with 0 < low <= high <= 1."""
    lo, hi = _reals(scale, name, 2, "a pair (low, high) of area fractions")
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < {name}[0] <= {name}[1] <= 1, got {(lo, hi)}")
    return lo, hi


def _jitter(jitter: object, name: str) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue) strengths: >= 0, hue <= 0.5 (ColorJitter's range)."""
    b, c, s, h = _reals(jitter, name, 4, "4 strengths (brightness, contrast, saturation, hue)")
    if min(b, c, s, h) < 0 or h > 0.5:
        raise ValueError(f"{name} strengths must be >= 0 (hue at most 0.5), got {(b, c, s, h)}")
    return b, c, s, h


def _normalize(normalize: object, name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """None, or (mean, std): two equally long sequences of finite numbers, std > 0 (a zero std divides by 0)."""
    if normalize is None:
        return None
    if not isinstance(normalize, (list, tuple)) or len(normalize) != 2:
        raise TypeError(f"{name} must be None or a pair (mean, std) of per-channel sequences, got {normalize!r}")
    mean = _reals(normalize[0], f"{name} mean", None, "a sequence of per-channel means")
    std = _reals(normalize[1], f"{name} std", None, "a sequence of per-channel standard deviations")
    if len(mean) != len(std):
        raise ValueError(f"{name} mean and std must have one entry per channel each, got {len(mean)} and {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"{name} std must be > 0 in every channel, got {std}")
    return mean, std


def _blur_flag(blur: object) -> bool | None:
    return None if blur is None else _checks.boolean(blur, "blur")


def _index(value: object, name: str, minimum: int | None = None) -> int:
    """An integer (Python, numpy or 0-dim integer tensor; not a bool), at least ``minimum``."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool") or (
            isinstance(value, torch.Tensor) and (value.dtype == torch.bool or value.dim() != 0)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def blur_kernel_size(size: int) -> int:
    """An odd kernel of about 10% of the image side (23 at 224, as in BYOL), at least 3."""
    _checks.positive_int(size, "size")
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class MultiView:
    """Apply a list of single-view transforms to one image: ``views = MultiView(ts)(img)``."""

    def __init__(self, transforms: Sequence[Callable]):
        if len(transforms) < 1:
            raise ValueError("transforms must hold at least one view transform")
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __call__(self, image) -> list[torch.Tensor]:
        return [t(image) for t in self.transforms]

    def __repr__(self) -> str:
        inner = "\n".join(f"  [{i}] {t!r}".replace("\n", "\n  ") for i, t in enumerate(self.transforms))
        return f"MultiView(\n{inner}\n)"


def view_transform(
    size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    flip: float = 0.5,
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.0,
    blur_size: int | None = None,
    solarize_p: float = 0.0,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> v2.Compose:
    """One view: random resized crop -> flip -> colour jitter -> grayscale -> blur -> solarise -> normalise.

    Args:
        size: output side in px.
        scale: area fraction range of the random resized crop (aspect ratio (3/4, 4/3)).
        flip: probability of a horizontal flip.
        jitter: (brightness, contrast, saturation, hue) strengths of ``ColorJitter``, applied in random
            order with probability ``jitter_p``.
        grayscale_p: probability of converting to grayscale (kept 3-channel).
        blur_p: probability of a Gaussian blur, sigma ~ U(0.1, 2.0).
        blur_size: the side the blur kernel is scaled to (default ``size``).
        solarize_p: probability of solarising at 0.5 (128 of 255).
        normalize: (mean, std) per channel, std > 0, or None to return values in [0, 1]; one entry each
            applies to every channel (torchvision's broadcasting, e.g. ``((0.5,), (0.5,))``).

    Raises:
        TypeError, ValueError: naming the argument, for a size that is not an int >= 1, a probability that
        is not a number in [0, 1] (True is not a probability), a ``scale`` that is not a pair
        0 < low <= high <= 1, ``jitter`` that is not 4 strengths >= 0 (hue <= 0.5), or a bad ``normalize``.
    """
    _checks.positive_int(size, "size")
    flip, jitter_p, grayscale_p, blur_p, solarize_p = (
        _checks.fraction(p, name) for name, p in (("flip", flip), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p),
                                                   ("blur_p", blur_p), ("solarize_p", solarize_p)))
    scale = _scale(scale, "scale")
    jitter = _jitter(jitter, "jitter")
    blur_size = size if blur_size is None else _checks.positive_int(blur_size, "blur_size")
    normalize = _normalize(normalize, "normalize")
    ts: list = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if jitter_p > 0 and any(j > 0 for j in jitter):
        b, c, s, h = jitter
        ts.append(v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=jitter_p))
    if grayscale_p > 0:
        ts.append(v2.RandomGrayscale(grayscale_p))
    if blur_p > 0:
        k = blur_kernel_size(blur_size)
        ts.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        ts.append(v2.RandomSolarize(0.5, p=solarize_p))
    if normalize is not None:
        mean, std = normalize
        ts.append(v2.Normalize(list(mean), list(std)))
    ts.append(v2.ToPureTensor())
    return v2.Compose(ts)


def _blur_on(blur: bool | None, size: int) -> bool:
    return size >= BLUR_MIN_SIZE if blur is None else blur


def simclr_views(
    size: int,
    *,
    n_views: int = 2,
    strength: float = 1.0,
    scale: tuple[float, float] = (0.08, 1.0),
    blur: bool | None = None,
    flip: float = 0.5,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiView:
    """SimCLR [0]: ``n_views`` identically distributed views.

    Colour distortion of strength s: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p = 0.8, grayscale p = 0.2
    (s = 1 on ImageNet, 0.5 on CIFAR-10); Gaussian blur with p = 0.5 when ``blur`` (None: on for
    images >= 64 px, off below, as SimCLR on CIFAR); horizontal flip with probability ``flip`` (0 for
    images whose mirror image is another class, such as digits).
    """
    _checks.positive_int(size, "size")
    _checks.positive_int(n_views, "n_views")
    s = _checks.positive(strength, "strength")
    blur = _blur_flag(blur)
    t = view_transform(
        size, scale=scale, jitter=(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5)),
        blur_p=0.5 if _blur_on(blur, size) else 0.0, flip=flip, normalize=normalize,
    )
    return MultiView([t] * n_views)


def byol_views(
    size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    blur: bool | None = None,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiView:
    """BYOL [1]: two asymmetric views.

    Both: crop, flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale 0.2. Blur p = 1.0 and
    0.1, solarisation p = 0.0 and 0.2 for views 1 and 2 (blur off for small images unless ``blur``).
    """
    _checks.positive_int(size, "size")
    on = _blur_on(_blur_flag(blur), size)
    common = dict(scale=scale, jitter=(0.4, 0.4, 0.2, 0.1), normalize=normalize)
    t1 = view_transform(size, blur_p=1.0 if on else 0.0, solarize_p=0.0, **common)
    t2 = view_transform(size, blur_p=0.1 if on else 0.0, solarize_p=0.2, **common)
    return MultiView([t1, t2])


def local_crop_size(size: int, reference_local: int = 96) -> int:
    """The local-crop side scaled from 96 px at 224 (DINO, SwAV): 14 at 32 px, 96 at 224."""
    _checks.positive_int(size, "size")
    _checks.positive_int(reference_local, "reference_local")
    return max(4, round(size * reference_local / REFERENCE_SIZE))


def dino_views(
    size: int,
    *,
    n_local: int = 8,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    blur: bool | None = None,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiView:
    """DINO multi-crop [2]: 2 global views of side ``size``, then ``n_local`` local views.

    Colour as BYOL. Global view 1: blur 1.0; global view 2: blur 0.1, solarisation 0.2; local views:
    blur 0.5 (blur off for small images unless ``blur``). ``local_size`` defaults to 96/224 of ``size``.
    """
    _checks.positive_int(size, "size")
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")
    ls = local_crop_size(size) if local_size is None else _checks.positive_int(local_size, "local_size")
    global_scale, local_scale = _scale(global_scale, "global_scale"), _scale(local_scale, "local_scale")
    on = _blur_on(_blur_flag(blur), size)
    common = dict(jitter=(0.4, 0.4, 0.2, 0.1), normalize=normalize)
    g1 = view_transform(size, scale=global_scale, blur_p=1.0 if on else 0.0, **common)
    g2 = view_transform(size, scale=global_scale, blur_p=0.1 if on else 0.0, solarize_p=0.2, **common)
    # local crops are blurred with a kernel scaled to the global size, as the 224-px recipe does
    local = view_transform(ls, scale=local_scale, blur_p=0.5 if on else 0.0, blur_size=size, **common)
    return MultiView([g1, g2] + [local] * n_local)


def swav_views(
    size: int,
    *,
    n_global: int = 2,
    n_local: int = 6,
    global_size: int | None = None,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.14),
    blur: bool | None = None,
    normalize: Normalize = IMAGENET_NORMALIZE,
) -> MultiView:
    """SwAV / DeepCluster-v2 multi-crop [3]: ``n_global`` views of side ``global_size`` + ``n_local`` local ones.

    Colour distortion of SimCLR at strength 1 (p = 0.8), grayscale 0.2, blur p = 0.5 on every view
    (off for small images unless ``blur``). ``size`` is the image side of the recipe (224: what the
    evaluation sees, and the scale of the local crops and of the blur kernel); ``global_size`` defaults
    to it, and may be smaller: DeepCluster-v2's 400-epoch recipe trains on 2 x 160 + 4 x 96 crops.
    """
    _checks.positive_int(size, "size")
    _checks.positive_int(n_global, "n_global")
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local must be an int >= 0, got {n_local!r}")
    gs = size if global_size is None else _checks.positive_int(global_size, "global_size")
    ls = local_crop_size(size) if local_size is None else _checks.positive_int(local_size, "local_size")
    global_scale, local_scale = _scale(global_scale, "global_scale"), _scale(local_scale, "local_scale")
    on = _blur_on(_blur_flag(blur), size)
    common = dict(jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5 if on else 0.0, blur_size=size, normalize=normalize)
    g = view_transform(gs, scale=global_scale, **common)
    local = view_transform(ls, scale=local_scale, **common)
    return MultiView([g] * n_global + [local] * n_local)


def eval_transform(size: int, *, normalize: Normalize = IMAGENET_NORMALIZE, resize: int | None = None) -> v2.Compose:
    """The evaluation view: resize the short side to ``resize`` (default 256/224 of ``size``; no resize
    when that equals the image size), centre-crop ``size``, normalise (``normalize`` as in
    :func:`view_transform`)."""
    _checks.positive_int(size, "size")
    normalize = _normalize(normalize, "normalize")
    if resize is None:  # the ImageNet protocol (256 -> 224); small images are only resized to ``size``
        resize = round(size * 256 / 224) if size >= BLUR_MIN_SIZE else size
    else:
        _checks.positive_int(resize, "resize")
    ts: list = [v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size),
                v2.ToDtype(torch.float32, scale=True)]
    if normalize is not None:
        ts.append(v2.Normalize(list(normalize[0]), list(normalize[1])))
    ts.append(v2.ToPureTensor())
    return v2.Compose(ts)


VIEWS: dict[str, Callable[..., MultiView]] = {
    "simclr": simclr_views,
    "byol": byol_views,
    "dino": dino_views,
    "swav": swav_views,
    "deepcluster": swav_views,
}


def build_views(name: str, size: int, **kwargs) -> MultiView:
    """The pipeline of a recipe by name ("simclr", "byol", "dino", "swav", "deepcluster")."""
    _checks.choice(name, "name", tuple(VIEWS))
    return VIEWS[name](size, **kwargs)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` at ``epoch`` (a hash: nearby items get unrelated streams).

    Args:
        seed: the run's seed, an int >= 0 (``config.MAX_SEED`` bounds the run's; the hash takes any size).
        epoch: an int >= 0 (the epoch, or the step for the GPU views' ``batch_generator``).
        index: the item's index, an int >= 0; negative indices name the run's other streams
            (train.py: -1 the sampler's permutation, -2 the DataLoader's worker seeds).

    Ints of numpy or 0-dim integer tensors are taken at their value (the same seed as the Python int);
    bools, floats, strings and None are refused: ``"3"`` or ``True`` would hash to another stream.
    """
    seed, epoch = _index(seed, "seed", minimum=0), _index(epoch, "epoch", minimum=0)
    index = _index(index, "index")
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's global CPU generator seeded to ``seed``; restore the state after.

    Only the CPU generator is touched (v2 transforms draw from it); CUDA generators are left alone.
    """
    state = torch.random.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)
