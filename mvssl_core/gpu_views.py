"""The multi-view pipelines of :mod:`mvssl_core.views`, batched on the training device.

On a GPU node the CPU pipeline (PIL decoding + one v2 transform per image in DataLoader workers) cannot
feed 8 GPUs. Here the data loader only reads the JPEG files' bytes (:class:`JpegBytes`, :func:`collate_bytes`);
the batch is decoded on the device (``torchvision.io.decode_jpeg(list, device="cuda")``) and augmented there
with per-sample random parameters drawn from a ``torch.Generator`` on the device:

    views_cpu = views.build_views("dino", 224)                 # the recipe, as the CPU pipeline runs it
    gpu = GpuMultiView.from_cpu(views_cpu)                     # the same recipe, read off its transforms
    loader = DataLoader(JpegBytes(root), batch_size=256, num_workers=4, collate_fn=collate_bytes)
    gen = torch.Generator("cuda").manual_seed(seed)
    for data, labels, indices in loader:
        images = decode_batch(data, "cuda")                    # list of (3, H, W) uint8 on the GPU
        views = gpu(images, generator=gen)                     # list of (B, 3, s, s) float32, as views_cpu

Each view does what ``views.view_transform`` does, with the same distributions: random resized crop
(torchvision's sampler, 10 tries then the centre crop, vectorised), horizontal flip, colour jitter in a random
order per sample, grayscale, Gaussian blur with sigma ~ U(0.1, 2), solarisation at 0.5, normalisation.
The crop is resampled with ``torchvision.ops.roi_align`` (bilinear, averaging ceil(crop / out) samples per
output pixel along each axis when downscaling: an anti-aliased resize like the CPU's ``antialias=True``,
not bit-equal to it). Differences from the CPU pipeline: the crop is resampled from float, not uint8
(no rounding to 1/255 before the colour ops), and the views of one seed differ from the CPU ones (another
generator); the distributions are the same (``tests/test_gpu_views.py`` checks them on CPU tensors).

Everything runs on any device; on CPU it is a test bed, not a replacement for ``views`` (which remains the
pipeline when no GPU is present). The augmentations never synchronise the device with the host (decoding,
nvJPEG's business, may).

In the trainer (``data.gpu_pipeline: true``, or ``auto``: on for an ImageFolder on CUDA; default false):
``train.build_train_set`` gives a ``JpegBytes`` holding the recipe's ``GpuMultiView``, the DataLoader collates
with ``collate_bytes`` (for the in-memory data sets, digits and shapes, a :class:`TensorImages` of uint8 tensors
that need no decoding: batched views are then also the fast pipeline on CPU, where the per-image transforms'
Python overhead dominates small images), and each micro-batch is decoded and augmented on the device from
``batch_generator(device, seed, step, micro, rank)``: a resumed run sees the same views as an uninterrupted one,
but another world size sees other views (the CPU pipeline's per-item seeds do not depend on it).

Decoder: torchvision 0.29 deprecates ``torchvision.io``'s image decoders in favour of TorchCodec's, warning on
every call in every rank. We keep torchvision's for now and silence that one warning (message, category and
module; every other warning still shows): ``decode_jpeg(list, device="cuda")`` decodes a whole batch with
nvJPEG in one call, which this pipeline is built on, and works with every torchvision the project accepts
(>= 0.19); TorchCodec is a separate package, not among the project's dependencies nor installed in its
environment, so a switch could be neither tested here nor measured against nvJPEG's batch rate. Switch once
TorchCodec's image decoders are a dependency and ``scripts/bench_gpu.py`` shows them at least as fast, and in
any case before a torchvision release that removes these functions.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv  # torchvision's own hue maths

from mvssl_core import _checks
from mvssl_core.data import ImageFolder
from mvssl_core.views import MultiView, item_seed

log = logging.getLogger(__name__)

# torchvision >= 0.29 warns on every decode (module docstring, "Decoder"): that warning only, nothing else
TORCHVISION_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"
warnings.filterwarnings("ignore", message=TORCHVISION_DEPRECATION, category=DeprecationWarning,
                        module=r"torchvision\.io\.image")

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation parameters (the arguments of ``views.view_transform``, resolved)."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    brightness: tuple[float, float] | None = None  # factor ranges, as ColorJitter stores them
    contrast: tuple[float, float] | None = None
    saturation: tuple[float, float] | None = None
    hue: tuple[float, float] | None = None
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_transform(cls, t: v2.Compose) -> ViewSpec:
        """Read the parameters off a ``views.view_transform`` pipeline (the one source of the recipes)."""
        kw: dict = {"flip": 0.0}
        for step in t.transforms:
            if isinstance(step, v2.RandomResizedCrop):
                if step.size[0] != step.size[1]:
                    raise ValueError(f"only square crops are supported, got size {step.size}")
                kw.update(size=int(step.size[0]), scale=tuple(step.scale), ratio=tuple(step.ratio))
            elif isinstance(step, v2.RandomHorizontalFlip):
                kw["flip"] = float(step.p)
            elif isinstance(step, v2.RandomApply) and isinstance(step.transforms[0], v2.ColorJitter):
                j = step.transforms[0]
                kw.update(jitter_p=float(step.p), **{k: _range(getattr(j, k))
                                                     for k in ("brightness", "contrast", "saturation", "hue")})
            elif isinstance(step, v2.RandomApply) and isinstance(step.transforms[0], v2.GaussianBlur):
                b = step.transforms[0]
                kw.update(blur_p=float(step.p), blur_kernel=int(b.kernel_size[0]), blur_sigma=tuple(b.sigma))
            elif isinstance(step, v2.RandomGrayscale):
                kw["grayscale_p"] = float(step.p)
            elif isinstance(step, v2.RandomSolarize):
                kw.update(solarize_p=float(step.p), solarize_threshold=float(step.threshold))
            elif isinstance(step, v2.Normalize):
                kw.update(mean=tuple(step.mean), std=tuple(step.std))
            elif not isinstance(step, (v2.ToImage, v2.ToDtype, v2.ToPureTensor)):
                raise ValueError(f"no GPU version of {type(step).__name__}; build views with views.view_transform")
        if "size" not in kw:
            raise ValueError("the view has no RandomResizedCrop")
        return cls(**kw)


def _range(r) -> tuple[float, float] | None:
    return None if r is None else (float(r[0]), float(r[1]))


class GpuMultiView:
    """A list of :class:`ViewSpec`, applied to a batch: ``views = GpuMultiView(specs)(images, generator=g)``.

    ``images``: a list of ``(3, H, W)`` uint8 tensors (sizes may differ) or a ``(B, 3, H, W)`` uint8 tensor,
    all on one device. Returns one float32 ``(B, 3, s, s)`` tensor per view, on that device.
    """

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        if len(specs) < 1:
            raise ValueError("specs must hold at least one ViewSpec")
        self.specs = list(specs)

    @classmethod
    def from_cpu(cls, multiview: MultiView) -> GpuMultiView:
        """The GPU twin of a ``views`` pipeline (``views.build_views(...)``)."""
        return cls([ViewSpec.from_transform(t) for t in multiview.transforms])

    def __len__(self) -> int:
        return len(self.specs)

    def __call__(self, images: Sequence[torch.Tensor] | torch.Tensor, *,
                 generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        elif len(images) == 0:
            raise ValueError("images must hold at least one image")
        elif len({tuple(im.shape) for im in images}) == 1:
            images = torch.stack(list(images))  # one roi_align for the batch instead of one per image
        device = images[0].device
        if generator is not None and generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device}, images on {device}")
        boxes = [crop_boxes(_sizes(images, device), s.scale, s.ratio, generator) for s in self.specs]
        crops = resized_crops(images, boxes, [s.size for s in self.specs])
        return [augment(c, s, generator) for c, s in zip(crops, self.specs)]


def _host_to(device: torch.device, values) -> torch.Tensor:
    """A small float32 tensor of host values on ``device``, copied without waiting for the device's queue."""
    t = torch.tensor(values, dtype=torch.float32)
    if device.type == "cuda":  # a pageable copy would synchronise with the stream; a pinned one is async
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _sizes(images, device) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return _host_to(device, [tuple(images.shape[-2:])]).expand(images.shape[0], 2)
    return _host_to(device, [tuple(im.shape[-2:]) for im in images])


def _rand(n: int, generator, device, *shape) -> torch.Tensor:
    return torch.rand(n, *shape, generator=generator, device=device)


def crop_boxes(hw: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.make_params`` for a batch: ``(B, 4)`` boxes (x0, y0, x1, y1) in px.

    Args:
        hw: ``(B, 2)`` float heights and widths of the images.
        scale, ratio: the area fraction and aspect-ratio (w / h) ranges.
    Returns:
        integer-valued float boxes: the first of ``tries`` draws that fits the image (area ~ U(scale) x H W,
        log aspect ~ U(log ratio), position uniform), else the centre crop clamped to ``ratio``.
    """
    n, device = hw.shape[0], hw.device
    H, W = hw[:, :1], hw[:, 1:]
    u = _rand(n, generator, device, tries, 4)
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = torch.argmax(ok.to(torch.uint8), dim=1, keepdim=True)  # the first try that fits (0 if none)
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    w, h, found = pick(w), pick(h), ok.any(dim=1)
    y0 = torch.floor(pick(u[..., 2]) * (H[:, 0] - h + 1))  # torch.randint(0, H - h + 1)
    x0 = torch.floor(pick(u[..., 3]) * (W[:, 0] - w + 1))
    # fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    Hf, Wf = H[:, 0], W[:, 0]
    in_ratio = Wf / Hf
    fw = torch.where(in_ratio < ratio[0], Wf, torch.where(in_ratio > ratio[1], torch.round(Hf * ratio[1]), Wf))
    fh = torch.where(in_ratio < ratio[0], torch.round(Wf / ratio[0]), Hf)
    fy0, fx0 = torch.floor((Hf - fh) / 2), torch.floor((Wf - fw) / 2)
    x0, y0 = torch.where(found, x0, fx0), torch.where(found, y0, fy0)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def resized_crops(images: Sequence[torch.Tensor] | torch.Tensor, boxes: list[torch.Tensor],
                  sizes: list[int]) -> list[torch.Tensor]:
    """Cut box ``boxes[v][b]`` out of image b and resize it to ``sizes[v]``: one ``(B, 3, s, s)`` per view.

    One ``roi_align`` per output size over a stacked batch, or per image and output size when the images
    differ in size (ImageNet). float32 output in [0, 1].
    """
    dtype = torch.float32
    out: list[torch.Tensor | None] = [None] * len(sizes)
    for s in sorted(set(sizes)):
        vs = [v for v, sv in enumerate(sizes) if sv == s]
        bx = torch.stack([boxes[v] for v in vs], dim=1)  # (B, V, 4)
        n, nv = bx.shape[:2]
        if isinstance(images, torch.Tensor):
            idx = torch.arange(n, device=bx.device, dtype=bx.dtype).repeat_interleave(nv)[:, None]
            rois = torch.cat([idx, bx.reshape(-1, 4)], dim=1)
            crops = _roi(images.to(dtype), rois, s).view(n, nv, 3, s, s)
        else:
            zero = torch.zeros(nv, 1, device=bx.device, dtype=bx.dtype)
            crops = torch.stack([_roi(im[None].to(dtype), torch.cat([zero, bx[b]], dim=1), s)
                                 for b, im in enumerate(images)])
        for k, v in enumerate(vs):
            out[v] = crops[:, k].div_(255.0)
    return out


def _roi(x: torch.Tensor, rois: torch.Tensor, s: int) -> torch.Tensor:
    # aligned=True: box [x0, x1) covers pixels x0 .. x1 - 1 exactly; sampling_ratio=-1: ceil(box / s)
    # bilinear samples averaged per output pixel and axis (area-averaging when downscaling)
    return roi_align(x, rois, output_size=(s, s), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _uniform(n: int, r: tuple[float, float], generator, device) -> torch.Tensor:
    return r[0] + (r[1] - r[0]) * _rand(n, generator, device)


def _bern(n: int, p: float, generator, device) -> torch.Tensor:
    return (_rand(n, generator, device) < p).view(n, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def jitter_params(n: int, spec: ViewSpec, generator: torch.Generator | None = None,
                  device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Per-sample ``ColorJitter`` parameters: factors ``(n, 3)`` (brightness, contrast, saturation; 1 when
    off), ``hue`` ``(n,)`` (0 when off), ``pos`` ``(n, 4)`` (op k runs at step ``pos[:, k]``, a uniform
    random order) and ``apply`` ``(n,)`` (the ``RandomApply`` coin)."""
    one = torch.ones(n, device=device)
    factors = torch.stack([_uniform(n, r, generator, device) if r is not None else one
                           for r in (spec.brightness, spec.contrast, spec.saturation)], dim=1)
    hue = _uniform(n, spec.hue, generator, device) if spec.hue is not None else torch.zeros(n, device=device)
    pos = torch.argsort(torch.argsort(_rand(n, generator, device, 4), dim=1), dim=1)
    apply = _bern(n, spec.jitter_p, generator, device).view(n)
    return {"factors": factors, "hue": hue, "pos": pos, "apply": apply}


def color_jitter(x: torch.Tensor, factors: torch.Tensor, hue: torch.Tensor, pos: torch.Tensor,
                 apply: torch.Tensor) -> torch.Tensor:
    """torchvision's ``ColorJitter.transform`` per sample, with the parameters of :func:`jitter_params`.

    Brightness, contrast and saturation are one blend ``f x + (1 - f) ref`` (ref = 0, the mean grey level,
    the grey image; clamped to [0, 1] as torchvision does). Each sample's order is cut at its hue step: three
    blend slots before it (a sample's blends that come before hue, in order, the rest idle with f = 1), one
    hue shift, three blend slots after it: 6 blends and 1 hue for the batch instead of 4 x 4 ops.
    """
    n = x.shape[0]
    one = torch.ones(n, device=x.device)
    blends = torch.argsort(pos[:, :3], dim=1)  # (n, 3): the blend ops in the order they run
    hue_pos = pos[:, 3]

    def blend_slots(x: torch.Tensor, before_hue: bool) -> torch.Tensor:
        for j in range(3):
            op = blends[:, j]
            op_pos = pos.gather(1, op[:, None]).squeeze(1)
            active = apply & ((op_pos < hue_pos) if before_hue else (op_pos > hue_pos))
            f = torch.where(active, factors.gather(1, op[:, None]).squeeze(1), one).view(n, 1, 1, 1)
            gray = _gray(x)
            op = op.view(n, 1, 1, 1)
            ref = torch.where(op == 0, 0.0, torch.where(op == 1, gray.mean(dim=(1, 2, 3), keepdim=True), gray))
            x = (f * x + (1 - f) * ref).clamp_(0.0, 1.0)  # f = 1: exactly x
        return x

    x = blend_slots(x, before_hue=True)
    shift = apply & (hue != 0)
    hsv = _rgb_to_hsv(x)
    h = (hsv[:, 0] + hue.view(n, 1, 1)).remainder_(1.0)
    x = torch.where(shift.view(n, 1, 1, 1), _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1)), x)
    return blend_slots(x, before_hue=False)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """A separable Gaussian blur with one sigma per sample (reflect padding, as torchvision)."""
    n, ch, hh, ww = x.shape
    half = (kernel - 1) / 2
    t = torch.linspace(-half, half, kernel, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(ch, dim=0)  # (n * ch, kernel)
    p = kernel // 2
    y = F.pad(x.reshape(1, n * ch, hh, ww), (p, p, p, p), mode="reflect")
    y = F.conv2d(y, k.view(n * ch, 1, 1, kernel), groups=n * ch)
    y = F.conv2d(y, k.view(n * ch, 1, kernel, 1), groups=n * ch)
    return y.view(n, ch, hh, ww)


def augment(x: torch.Tensor, spec: ViewSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Everything after the crop: flip, colour jitter, grayscale, blur, solarise, normalise (per sample).

    Args:
        x: ``(B, 3, s, s)`` float in [0, 1].
    """
    n, device = x.shape[0], x.device
    x = torch.where(_bern(n, spec.flip, generator, device), x.flip(-1), x)
    if spec.jitter_p > 0 and any(r is not None for r in (spec.brightness, spec.contrast, spec.saturation, spec.hue)):
        x = color_jitter(x, **jitter_params(n, spec, generator, device))
    if spec.grayscale_p > 0:
        x = torch.where(_bern(n, spec.grayscale_p, generator, device), _gray(x).expand_as(x), x)
    if spec.blur_p > 0:
        k = min(spec.blur_kernel, 2 * (x.shape[-1] // 2) - 1)  # reflect padding needs pad < side
        sigma = _uniform(n, spec.blur_sigma, generator, device)
        if k >= 3:
            x = torch.where(_bern(n, spec.blur_p, generator, device), gaussian_blur(x, sigma, k), x)
    if spec.solarize_p > 0:
        solar = torch.where(x >= spec.solarize_threshold, 1.0 - x, x)
        x = torch.where(_bern(n, spec.solarize_p, generator, device), solar, x)
    if spec.mean is not None:
        mean, std = _host_to(device, [spec.mean, spec.std]).view(2, 1, -1, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def batch_generator(device: str | torch.device, seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """A generator on ``device`` for the views of one micro-batch, seeded from (seed, step, micro, rank).

    ``step`` and ``micro`` are ints >= 0, ``rank`` an int in [0, 2**20) (micro and rank share one index).
    """
    _checks.positive_int(step, "step", minimum=0)
    _checks.positive_int(micro, "micro", minimum=0)
    if _checks.positive_int(rank, "rank", minimum=0) >= 1 << 20:
        raise ValueError(f"rank must be an int < 2**20, got {rank}")
    return torch.Generator(device).manual_seed(item_seed(seed, step, (micro << 20) + rank))


# ------------------------------------------------------------------------------------------------
# bytes in, decoded batch out


class JpegBytes(Dataset):
    """An ImageFolder (``root/<class>/<image>``) whose items are ``(bytes, label, index)``, undecoded.

    ``bytes`` is the file as a 1-D uint8 tensor: the workers only read, the device decodes
    (:func:`decode_batch`) and applies ``views`` (kept here for the consumer, not applied). The tensor owns
    ordinary memory (read with Python, not ``torchvision.io.read_file``, whose tensors a DataLoader worker
    cannot send: the worker then drops the batch and the loader waits forever).
    Layout checks and errors are those of ``data.ImageFolder``.
    """

    def __init__(self, root: str | os.PathLike, views: GpuMultiView | None = None) -> None:
        folder = ImageFolder(root)
        self.samples, self.targets, self.classes = folder.samples, folder.targets, folder.classes
        self.views = views

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the views are drawn on the device (see :func:`batch_generator`)."""

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                raw = bytearray(f.read())
        except OSError as e:  # unreadable now (permissions, a file gone): skipped like an undecodable one
            log.warning("skipped an unreadable image file %s: %s", path, e)
            raw = bytearray()
        data = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        return data, label, index  # an empty file is replaced at decoding, as any undecodable one


class TensorImages(Dataset):
    """An in-memory data set of uint8 image tensors (``data.Digits``, ``data.Shapes``) whose views are
    made in batches on the device, like :class:`JpegBytes` but with nothing to decode.

    Items are ``(image (C, H, W) uint8, label, index)``; the default collate stacks them. ``views`` is
    kept for the consumer (the training loop), not applied here.
    """

    def __init__(self, dataset: Dataset, views: GpuMultiView | None = None) -> None:
        self.dataset, self.views = dataset, views

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: the views are drawn on the device (see :func:`batch_generator`)."""

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.dim() != 3:
            raise TypeError(f"TensorImages needs (C, H, W) uint8 tensors, got {type(image).__name__} "
                            f"{getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))} at index {index}")
        return image, label, index


def collate_bytes(batch):
    """``[(bytes, label, index), ...]`` -> ``(list of bytes, labels (B,), indices (B,))``."""
    data, labels, indices = zip(*batch)
    return list(data), torch.tensor(labels), torch.tensor(indices)


def decode_batch(data: Sequence[torch.Tensor], device: str | torch.device = "cuda") -> list[torch.Tensor]:
    """Decode a batch of image files to ``(3, H, W)`` uint8 RGB tensors on ``device``.

    JPEGs are decoded together by ``decode_jpeg`` (nvJPEG on CUDA). If that fails (a PNG, a CMYK JPEG,
    a broken file), the batch is decoded file by file on ``device``, and only a file the device cannot decode
    is decoded on the CPU (``decode_image``); a file nothing can decode is replaced by another image of the
    batch and logged, so the batch keeps its size (as ``data.ImageFolder`` skips).
    """
    device = torch.device(device)
    try:
        return list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for i, d in enumerate(data):
        try:  # one odd file costs its own decoding on the CPU, not the whole batch's
            out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            continue
        except RuntimeError:
            pass
        try:
            out.append(decode_image(d, mode=ImageReadMode.RGB).to(device, non_blocking=True))
        except RuntimeError as e:
            log.warning("skipped an undecodable image (item %d of the batch): %s", i, e)
            out.append(None)
    good = [im for im in out if im is not None]
    if not good:
        raise RuntimeError("no image of the batch could be decoded")
    return [im if im is not None else good[i % len(good)] for i, im in enumerate(out)]
