"""Image data sets: ImageFolder (ImageNet layout), CIFAR-10/100, STL-10, scikit-learn's digits, and
procedurally generated shapes. Every data set yields ``(image, label)``; ``MultiViewDataset`` turns an
image into a list of augmented views.

Images are PIL images (ImageFolder, CIFAR, STL-10) or ``(C, H, W)`` uint8 tensors (digits, shapes; PIL with
``as_pil=True``); the ``views`` pipelines accept both. Unreadable image files are skipped, counted and
logged, never fatal (``ImageFolder.skipped``); folders that cannot be listed and classes left with no image
are counted and reported with a ``DataWarning`` (``ImageFolder.unreadable``). A missing, unreadable or empty
data folder, one with no readable image, or a torchvision data set that is neither on disk nor downloadable,
raises ``FileNotFoundError`` naming the path and what to put there.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from mvssl_core import _checks
from mvssl_core.views import item_seed, seeded

log = logging.getLogger(__name__)

# what PIL raises on a file that is not an image, is truncated, or is otherwise broken
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

_LAYOUT = "expected the ImageNet layout root/<class>/<image>.JPEG (one sub-folder per class)"


class DataWarning(UserWarning):
    """A data set was built with parts of its folder left out: folders that could not be listed, classes
    with no image. ``warnings.simplefilter("error", DataWarning)`` (or ``-W error::mvssl_core.data.DataWarning``)
    turns it into an error."""


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _examples(items: Sequence[str], k: int = 3) -> str:
    return "; ".join(items[:k]) + (f"; ... ({len(items) - k} more)" if len(items) > k else "")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file and decode it fully as RGB (a truncated file fails here, not later)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


# ----------------------------------------------------------------------------------------------------
# ImageFolder


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder (``root/<class>/<image>``, the ImageNet layout) that skips bad files.

    Files without an image extension are left out and listed in ``non_image_files``. A folder that cannot
    be listed (torchvision's ``os.walk`` passes over it in silence) is recorded in ``unreadable`` as
    ``(path, reason)``; it and any class left with no image are reported with a :class:`DataWarning`.
    An image that cannot be opened or decoded is skipped and recorded in ``skipped`` as ``(path, reason)``:
      - ``verify=True`` decodes every image once at construction and drops the bad ones (exact, costs one
        pass over the data: right for small sets, slow for ImageNet);
      - otherwise images are decoded at construction up to the first good one (one file in a sound
        folder; every file in one where none is readable), and a bad image is found when it is loaded:
        ``__getitem__(i)`` then returns the next good item (i + 1, i + 2, ... wrapping around), logs a
        warning, and adds it to ``skipped`` of the process that loaded it (each DataLoader worker holds its
        own copy).

    Args:
        root: the folder holding one sub-folder per class.
        transform: applied to the PIL image (e.g. a ``views.MultiView``).
        target_transform: applied to the label.
        verify: decode every image at construction (see above).

    Raises:
        FileNotFoundError: ``root`` is missing, not a folder, cannot be listed, holds no class folder, or no
            readable image (one line naming ``root``, the counts and the first paths).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        verify: bool = False,
    ) -> None:
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"image folder {root} does not exist; {_LAYOUT}")
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} is not a folder; {_LAYOUT}")
        self.non_image_files: list[str] = []
        self.unreadable: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()

        def is_image(path: str) -> bool:
            if has_file_allowed_extension(path, IMG_EXTENSIONS):
                return True
            if not os.path.basename(path).startswith("."):
                self.non_image_files.append(path)
            return False

        super().__init__(str(root), transform=transform, target_transform=target_transform,
                         loader=load_rgb, is_valid_file=is_image, allow_empty=True)
        if self.non_image_files:
            log.warning("%s: left out %d files without an image extension (e.g. %s)",
                        root, len(self.non_image_files), self.non_image_files[0])
        if self.unreadable:
            listed = [f"{p} ({r})" for p, r in self.unreadable]
            n = len(listed)
            if not self.samples:
                raise FileNotFoundError(f"image folder {root} holds no readable image: {n} of its folders could "
                                        f"not be listed: {_examples(listed)}")
            warnings.warn(f"image folder {root}: {n} folder{'s' * (n != 1)} could not be listed and "
                          f"{'their' if n != 1 else 'its'} images are left out: {_examples(listed)}",
                          DataWarning, stacklevel=2)
        if verify:
            good = []
            for path, target in self.samples:
                try:
                    load_rgb(path)
                except BAD_IMAGE_ERRORS as e:
                    self.skipped.append((path, _reason(e)))
                else:
                    good.append((path, target))
            self.samples = self.imgs = good
            self.targets = [t for _, t in good]
        elif self.samples:
            self._first_good()
        readable = len(self.samples) - len(self._bad)  # (with verify, samples holds only the good ones)
        if self.skipped and not readable:
            n = len(self.skipped)
            raise FileNotFoundError(f"image folder {root} holds no readable image: all {n} image file"
                                    f"{'s' * (n != 1)} failed to load: "
                                    f"{_examples([f'{p}: {r}' for p, r in self.skipped], 2)}")
        if self.skipped:
            log.warning("%s: skipped %d unreadable images (e.g. %s: %s)", root, len(self.skipped), *self.skipped[0])
        if not self.samples:
            raise FileNotFoundError(f"image folder {root} holds no readable image in its class folders; {_LAYOUT}")
        has_image = set(self.targets)
        empty = [c for c, i in self.class_to_idx.items() if i not in has_image]
        if empty:
            warnings.warn(f"image folder {root}: {len(empty)} class{'es' * (len(empty) != 1)} with no image: "
                          f"{', '.join(empty[:10])}{', ...' * (len(empty) > 10)} (each keeps its label index)",
                          DataWarning, stacklevel=2)

    def _first_good(self) -> None:
        """Decode the images in order up to the first good one; record the bad ones met before it."""
        for i, (path, _) in enumerate(self.samples):
            try:
                self.loader(path)
            except BAD_IMAGE_ERRORS as e:
                self._bad.add(i)
                self.skipped.append((path, _reason(e)))
            else:
                return

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """torchvision's class folders (every sub-folder, sorted), with one-line errors for a root that
        cannot be listed or holds no class folder."""
        try:
            with os.scandir(directory) as entries:
                classes = sorted(e.name for e in entries if e.is_dir())
        except OSError as e:
            raise FileNotFoundError(f"image folder {directory} cannot be listed ({_reason(e)}); {_LAYOUT}") from e
        if not any(not c.startswith(".") for c in classes):
            raise FileNotFoundError(f"image folder {directory} holds no class sub-folder; {_LAYOUT}")
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory: str | os.PathLike, class_to_idx: dict[str, int],
                     extensions: tuple[str, ...] | None = None, is_valid_file: Callable[[str], bool] | None = None,
                     allow_empty: bool = True) -> list[tuple[str, int]]:
        """torchvision's ``make_dataset`` (the same files in the same order), except that a folder that
        cannot be listed is recorded in ``unreadable`` instead of being passed over in silence. Empty
        classes are reported by ``__init__``, whatever ``allow_empty``."""
        if is_valid_file is None:
            def is_valid_file(path: str) -> bool:
                return has_file_allowed_extension(path, extensions or IMG_EXTENSIONS)

        def unreadable(e: OSError) -> None:
            self.unreadable.append((os.fspath(e.filename) if e.filename is not None else "?", _reason(e)))

        samples = []
        for cls in sorted(class_to_idx):
            class_dir = os.path.join(directory, cls)
            if not os.path.isdir(class_dir):
                continue
            for folder, _, names in sorted(os.walk(class_dir, onerror=unreadable, followlinks=True)):
                samples.extend((os.path.join(folder, name), class_to_idx[cls]) for name in sorted(names)
                               if is_valid_file(os.path.join(folder, name)))
        return samples

    @property
    def n_skipped(self) -> int:
        """Unreadable images skipped so far (in this process)."""
        return len(self.skipped)

    def __getitem__(self, index: int):
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                continue
            path, target = self.samples[i]
            try:
                img = self.loader(path)
            except BAD_IMAGE_ERRORS as e:
                self._bad.add(i)
                self.skipped.append((path, f"{type(e).__name__}: {e}"))
                log.warning("skipped unreadable image %s (%s: %s); %d skipped so far",
                            path, type(e).__name__, e, len(self.skipped))
                continue
            if self.transform is not None:
                img = self.transform(img)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return img, target
        raise RuntimeError(f"no readable image left in {self.root}: all {n} failed to load")


# ----------------------------------------------------------------------------------------------------
# torchvision's CIFAR-10/100 and STL-10

_TORCHVISION = {
    "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": (torchvision.datasets.CIFAR100, "cifar-100-python",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
    "stl10": (torchvision.datasets.STL10, "stl10_binary",
              "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"),
}


def _torchvision_dataset(name: str, root, download: bool, **kwargs) -> Dataset:
    cls, folder, url = _TORCHVISION[name]
    root = Path(root).expanduser()
    where = (f"put the extracted archive {url} under {root} (so that {root / folder}/ exists), "
             f"or pass download=True on a machine with network access")
    try:
        return cls(str(root), download=download, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        if download:
            raise FileNotFoundError(f"{name}: downloading into {root} failed ({e}); {where}") from e
        raise FileNotFoundError(f"{name} not found (or corrupted) under {root}; {where}") from e
    except (URLError, OSError) as e:  # no network, DNS failure, refused connection, unreadable or full disk
        what = f"downloading into {root}" if download else f"reading {root}"
        raise FileNotFoundError(f"{name}: {what} failed ({type(e).__name__}: {e}); {where}") from e


def cifar10(root="data", train: bool = True, download: bool = False, transform: Callable | None = None) -> Dataset:
    """CIFAR-10 (32x32 RGB, 10 classes; 50k train, 10k test) through torchvision; PIL images."""
    return _torchvision_dataset("cifar10", root, download, train=train, transform=transform)


def cifar100(root="data", train: bool = True, download: bool = False, transform: Callable | None = None) -> Dataset:
    """CIFAR-100 (32x32 RGB, 100 fine classes) through torchvision; PIL images."""
    return _torchvision_dataset("cifar100", root, download, train=train, transform=transform)


def stl10(root="data", split: str = "train+unlabeled", download: bool = False,
          transform: Callable | None = None) -> Dataset:
    """STL-10 (96x96 RGB, 10 classes) through torchvision; PIL images.

    split: "train" (5k), "test" (8k), "unlabeled" (100k, label -1) or "train+unlabeled" (for pre-training).
    """
    _checks.choice(split, "split", ("train", "test", "unlabeled", "train+unlabeled"))
    return _torchvision_dataset("stl10", root, download, split=split, transform=transform)


# ----------------------------------------------------------------------------------------------------
# In-memory and generated sets


def _split_indices(n: int, split: str, test_fraction: float, seed: int) -> np.ndarray:
    _checks.choice(split, "split", ("train", "test", "all"))
    if split == "all":
        return np.arange(n)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


class Digits(Dataset):
    """scikit-learn's bundled handwritten digits (1,797 8x8 gray images, 10 classes), upsampled.

    Images are ``(C, size, size)`` uint8 tensors (bilinear upsampling of the 0-16 gray levels to 0-255),
    3-channel copies of the gray image when ``rgb`` (so every backbone and pipeline applies unchanged).

    Args:
        size: output side in px (8 keeps the originals).
        split: "all", or "train"/"test", a fixed random split of ``test_fraction`` drawn with ``seed``.
        rgb: repeat the gray channel 3 times.
        transform: applied to the image.
        as_pil: return PIL images instead of tensors.
    """

    def __init__(self, size: int = 16, split: str = "all", *, rgb: bool = True, test_fraction: float = 0.2,
                 seed: int = 0, transform: Callable | None = None, as_pil: bool = False) -> None:
        from sklearn.datasets import load_digits  # scikit-learn: the dev extra

        _checks.positive_int(size, "size", minimum=8)
        bunch = load_digits()
        idx = _split_indices(len(bunch.target), split, test_fraction, seed)
        x = torch.as_tensor(bunch.images[idx], dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        if size != 8:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        self.images = x.expand(-1, 3, -1, -1).contiguous() if rgb else x
        self.targets = [int(t) for t in bunch.target[idx]]
        self.classes = [str(c) for c in range(10)]
        self.transform, self.as_pil = transform, as_pil

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.as_pil:
            img = torchvision.transforms.v2.functional.to_pil_image(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("flat", "stripes", "checker", "noise")


def _shape_sdf(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (px, < 0 inside) to a shape of half-extent ``r`` centred at the origin.

    Exact for circle and ring; polygons use the max over their edges' half-planes (exact inside and
    along edges, which is all the 1-px anti-aliasing needs).
    """
    if shape == "circle":
        return np.hypot(x, y) - r
    if shape == "ring":
        return np.abs(np.hypot(x, y) - 0.7 * r) - 0.3 * r
    if shape == "square":
        s = 0.8 * r
        return np.maximum(np.abs(x), np.abs(y)) - s
    if shape == "diamond":
        return (np.abs(x) + np.abs(y) - r) / math.sqrt(2)
    if shape == "cross":
        s, w = 0.9 * r, 0.3 * r
        bar_h = np.maximum(np.abs(x) - s, np.abs(y) - w)
        bar_v = np.maximum(np.abs(x) - w, np.abs(y) - s)
        return np.minimum(bar_h, bar_v)
    if shape == "triangle":  # equilateral, circumradius r, pointing up (image y grows downwards)
        d = [x * math.cos(a) + y * math.sin(a) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3,
                                                        math.pi / 2 + 4 * math.pi / 3)]
        return np.maximum(np.maximum(d[0], d[1]), d[2]) - 0.5 * r
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _pattern(kind: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """A texture in [-1, 1] over the grid."""
    if kind == "flat":
        return np.zeros_like(x)
    phi = rng.uniform(0, math.pi)
    freq = rng.uniform(2.0, 6.0) / size  # cycles per px
    phase = rng.uniform(0, 2 * math.pi)
    u = x * math.cos(phi) + y * math.sin(phi)
    v = -x * math.sin(phi) + y * math.cos(phi)
    if kind == "stripes":
        return np.sin(2 * math.pi * freq * u + phase)
    if kind == "checker":
        return np.sign(np.sin(2 * math.pi * freq * u + phase) * np.sin(2 * math.pi * freq * v + phase))
    return np.clip(rng.standard_normal(x.shape) / 2, -1, 1)  # noise


class Shapes(Dataset):
    """A generated image set: coloured shapes on textured backgrounds; the label is the shape.

    Item i is drawn from its own generator, seeded by ``(seed, split, i)``: deterministic, independent of
    access order and worker count, any ``n`` at no memory cost (generated lazily). Labels cycle through
    ``shapes`` (``i % len(shapes)``), so every class has ``n // K`` or ``n // K + 1`` items.
    Nuisances, each drawn per item: position (the shape stays inside the image), scale (half-extent 20-40%
    of the side), rotation (+-15 degrees), foreground and background colour (at least 0.4 apart in RGB),
    foreground texture (flat, stripes, checker or noise), background texture and brightness gradient.

    Args:
        n: number of items.
        size: image side in px (>= 8).
        seed: the data set's seed.
        split: "train" or "test": the same recipe with unrelated draws.
        shapes: the classes, a subset of ``SHAPES``.
        transform: applied to the image.
        as_pil: return PIL images instead of ``(3, size, size)`` uint8 tensors.
    """

    def __init__(self, n: int = 10_000, size: int = 32, *, seed: int = 0, split: str = "train",
                 shapes: Sequence[str] = SHAPES, transform: Callable | None = None, as_pil: bool = False) -> None:
        _checks.positive_int(n, "n")
        _checks.positive_int(size, "size", minimum=8)
        _checks.choice(split, "split", ("train", "test"))
        if len(shapes) < 2 or len(set(shapes)) != len(shapes):
            raise ValueError(f"shapes must name at least 2 distinct shapes, got {shapes!r}")
        for s in shapes:
            _checks.choice(s, "shapes[i]", SHAPES)
        self.n, self.size, self.seed, self.split = n, size, int(seed), split
        self.classes = list(shapes)
        self.transform, self.as_pil = transform, as_pil
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
        self._grid = (xx, yy)

    @property
    def targets(self) -> list[int]:
        k = len(self.classes)
        return [i % k for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Item ``index``: the ``(size, size, 3)`` float image in [0, 1], the ``(size, size)`` foreground
        coverage in [0, 1] (the shape without its nuisances), and the label."""
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} items")
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, index])
        label = index % len(self.classes)
        size, (xx, yy) = self.size, self._grid
        r = rng.uniform(0.2, 0.4) * size
        reach = min(1.05 * r, size / 2)  # every shape fits in a disc of radius ~r
        cx, cy = rng.uniform(reach, size - reach, size=2)
        theta = rng.uniform(-math.pi / 12, math.pi / 12)
        dx, dy = xx - cx, yy - cy
        x = dx * math.cos(theta) + dy * math.sin(theta)
        y = -dx * math.sin(theta) + dy * math.cos(theta)
        mask = np.clip(0.5 - _shape_sdf(self.classes[label], x, y, r), 0.0, 1.0)[..., None]

        bg = rng.uniform(0, 1, size=3)
        fg = rng.uniform(0, 1, size=3)
        for _ in range(20):  # keep the shape visible
            if np.linalg.norm(fg - bg) >= 0.4:
                break
            fg = rng.uniform(0, 1, size=3)
        fg_tex = TEXTURES[rng.integers(len(TEXTURES))]
        fg_amp = rng.uniform(0.1, 0.3)
        bg_tex = TEXTURES[rng.integers(len(TEXTURES))]
        bg_amp = rng.uniform(0.0, 0.15)
        g_dir = rng.uniform(0, 2 * math.pi)
        g_amp = rng.uniform(0.0, 0.2)
        gradient = g_amp * ((xx - size / 2) * math.cos(g_dir) + (yy - size / 2) * math.sin(g_dir)) / size
        front = fg * (1 + fg_amp * _pattern(fg_tex, rng, xx, yy, size))[..., None]
        back = bg * (1 + bg_amp * _pattern(bg_tex, rng, xx, yy, size) + gradient)[..., None]
        img = np.clip(mask * front + (1 - mask) * back, 0.0, 1.0)
        return img, mask[..., 0], label

    def __getitem__(self, index: int):
        if index < 0:
            index += self.n
        img, _, label = self.render(index)
        out = torch.from_numpy(np.round(img * 255).astype(np.uint8)).permute(2, 0, 1).contiguous()
        if self.as_pil:
            out = torchvision.transforms.v2.functional.to_pil_image(out)
        if self.transform is not None:
            out = self.transform(out)
        return out, label


# ----------------------------------------------------------------------------------------------------
# Multi-view wrapper


class MultiViewDataset(Dataset):
    """Wrap ``(image, label)`` items into ``(views, label)``, ``views = pipeline(image)`` (a list).

    With ``seed`` set, item i at epoch e is augmented under its own seed ``views.item_seed(seed, e, i)``
    (torch's global generator is restored afterwards): the views no longer depend on worker count,
    process count or draw order, so a resumed or multi-process run sees the same views as a single
    uninterrupted one. Call ``set_epoch(e)`` before each epoch; with ``persistent_workers=True`` workers
    keep the epoch they were started with, so leave persistent workers off (the default) when seeding.
    With ``seed=None`` the pipeline draws from torch's global generator as usual.

    The default collate turns a batch into ``(list of (B, C, s, s) tensors, one per view, labels)``.
    """

    def __init__(self, dataset: Dataset, views: Callable, *, seed: int | None = None) -> None:
        if not callable(views):
            raise TypeError(f"views must be callable (e.g. views.simclr_views(32)), got {type(views).__name__}")
        self.dataset, self.views, self.seed, self.epoch = dataset, views, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img, label = self.dataset[index]
        if self.seed is None:
            return self.views(img), label
        with seeded(item_seed(self.seed, self.epoch, index)):
            return self.views(img), label


# ----------------------------------------------------------------------------------------------------
# By name

DATASETS = ("imagefolder", "cifar10", "cifar100", "stl10", "digits", "shapes")


def build_dataset(name: str, *, split: str | None = "train", root: str | os.PathLike = "data", download: bool = False,
                  transform: Callable | None = None, **kwargs) -> Dataset:
    """A data set by name, the form the command line uses.

    - "imagefolder": ``ImageFolder(root/split)`` (``split`` "train" or "val"; None for ``root`` itself).
    - "cifar10", "cifar100": ``split`` "train" or "test", under ``root``.
    - "stl10": ``split`` as ``stl10`` ("train" gives the 5k labelled images).
    - "digits": ``Digits(split=...)``; kwargs ``size``, ``rgb``, ...
    - "shapes": ``Shapes(split=...)``; kwargs ``n``, ``size``, ``seed``, ...
    """
    _checks.choice(name, "name", DATASETS)
    if name == "imagefolder":
        path = Path(root) if split is None else Path(root) / split
        return ImageFolder(path, transform=transform, **kwargs)
    if name in ("cifar10", "cifar100"):
        _checks.choice(split, "split", ("train", "test"))
        return _torchvision_dataset(name, root, download, train=split == "train", transform=transform)
    if name == "stl10":
        return stl10(root, split=split, download=download, transform=transform)
    if name == "digits":
        return Digits(split=split, transform=transform, **kwargs)
    return Shapes(split=split, transform=transform, **kwargs)
