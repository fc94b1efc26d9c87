"""Data sets: ImageFolder skipping bad files, clear errors for missing data, digits, generated shapes,
CIFAR through a fake on-disk layout, and the seeded multi-view wrapper."""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from mvssl_core import data as D
from mvssl_core.views import simclr_views


# ----------------------------------------------------------------------------- ImageFolder


def _write_image(path, seed, fmt="JPEG"):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path, fmt)


@pytest.fixture
def tiny_folder(tmp_path):
    """train/cat: 3 good images + 1 truncated JPEG; train/dog: 3 good images + a text file."""
    root = tmp_path / "train"
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            _write_image(root / cls / f"{i}.{'jpg' if i else 'png'}", seed=10 * c + i, fmt="JPEG" if i else "PNG")
    good = (root / "cat" / "1.jpg").read_bytes()
    (root / "cat" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\0")
    return root


def test_imagefolder_verify_skips_and_counts_bad_files(tiny_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mvssl_core.data"):
        ds = D.ImageFolder(tiny_folder, verify=True)
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 6 and ds.n_skipped == 1
    assert ds.skipped[0][0].endswith("broken.jpg") and "truncated" in ds.skipped[0][1].lower()
    assert [p.split("/")[-1] for p in ds.non_image_files] == ["notes.txt"]  # hidden files are not counted
    assert "skipped 1 unreadable" in caplog.text and "notes.txt" in caplog.text
    assert Counter(ds.targets) == {0: 3, 1: 3}
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0


def test_imagefolder_lazy_skip_returns_the_next_good_item(tiny_folder, caplog):
    ds = D.ImageFolder(tiny_folder, transform=torchvision.transforms.v2.PILToTensor())
    assert len(ds) == 7 and ds.n_skipped == 0  # not decoded yet
    bad = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg")][0]
    with caplog.at_level(logging.WARNING, logger="mvssl_core.data"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.n_skipped == 1 and "broken.jpg" in caplog.text
    assert torch.equal(items[bad][0], items[bad + 1][0])  # replaced by the next item
    assert all(img.shape == (3, 20, 24) for img, _ in items)
    ds[bad]  # a known bad index is not re-read, not re-counted
    assert ds.n_skipped == 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_imagefolder_through_a_dataloader_with_views(tiny_folder):
    ds = D.MultiViewDataset(D.ImageFolder(tiny_folder), simclr_views(16), seed=0)
    views, labels = next(iter(DataLoader(ds, batch_size=7)))
    assert len(views) == 2 and views[0].shape == (7, 3, 16, 16) and labels.tolist() == [0] * 3 + [1] * 4
    # (the truncated cat/broken.jpg, item 3, was replaced by the next item, the first dog)


def test_missing_or_empty_folders_give_clear_errors(tmp_path):
    missing = tmp_path / "imagenet" / "train"
    with pytest.raises(FileNotFoundError, match=r"imagenet/train does not exist.*root/<class>/<image>"):
        D.ImageFolder(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no class sub-folder"):
        D.ImageFolder(empty)
    (empty / "cat").mkdir()
    (empty / "cat" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"empty holds no readable image"):
        D.ImageFolder(empty)
    _write_image(empty / "cat" / "a.jpg", 0)
    (empty / "cat" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="no readable image"):
        D.ImageFolder(empty, verify=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.build_dataset("imagefolder", root=tmp_path / "nowhere", split="val")


# ----------------------------------------------------------------------------- CIFAR / STL-10


def _fake_cifar10(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": [(k + i) % 10 for i in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    return folder


def test_cifar10_reads_the_python_batches(tmp_path, monkeypatch):
    """torchvision checks the real files' md5 sums; the fake layout bypasses only that check."""
    folder = _fake_cifar10(tmp_path)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    train = D.cifar10(tmp_path, train=True)
    test = D.build_dataset("cifar10", split="test", root=tmp_path)
    assert len(train) == 20 and len(test) == 4
    img, label = train[0]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and label == 0
    raw = pickle.loads((folder / "test_batch").read_bytes())["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(test[1][0]), raw) and test[1][1] == 6
    views, _ = D.MultiViewDataset(train, simclr_views(32), seed=0)[3]
    assert [v.shape for v in views] == [(3, 32, 32)] * 2


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("stl10", "stl10_binary")])
def test_absent_torchvision_sets_say_where_to_put_them(tmp_path, name, folder):
    split = "train"
    with pytest.raises(FileNotFoundError, match=rf"{name} not found .*under {tmp_path}.*{folder}/ exists.*download=True"):
        D.build_dataset(name, split=split, root=tmp_path, download=False)


def test_failed_download_says_where_to_put_the_data(tmp_path, monkeypatch):
    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(FileNotFoundError, match=r"downloading into .* failed \(URLError.*cifar-10-python.tar.gz"):
        D.cifar10(tmp_path, download=True)


# ----------------------------------------------------------------------------- digits


def test_digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    full = D.Digits(size=8, rgb=False)
    assert len(full) == 1797 and full.images.shape == (1797, 1, 8, 8) and full.images.dtype == torch.uint8
    expected = torch.as_tensor(np.round(raw.images / 16 * 255), dtype=torch.uint8)
    assert torch.equal(full.images[:, 0], expected) and full.targets == raw.target.tolist()
    big = D.Digits(size=32)
    img, label = big[5]
    assert img.shape == (3, 32, 32) and torch.equal(img[0], img[2]) and label == raw.target[5]
    assert torch.allclose(big.images.float().mean(), full.images.float().mean(), rtol=0.1)  # same ink, resized
    train, test = D.Digits(16, "train"), D.Digits(16, "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert set(Counter(test.targets)) == set(range(10))
    assert isinstance(D.Digits(16, as_pil=True)[0][0], Image.Image)
    with pytest.raises(ValueError, match="split"):
        D.Digits(16, "val")


# ----------------------------------------------------------------------------- generated shapes


def test_shapes_are_deterministic_from_the_seed_and_index():
    a = D.Shapes(50, size=32, seed=3)
    b = D.Shapes(50, size=32, seed=3)
    order = [b[i][0] for i in reversed(range(50))][::-1]  # drawn in another order
    assert all(torch.equal(a[i][0], order[i]) for i in range(50))
    c = D.Shapes(50, size=32, seed=4)
    t = D.Shapes(50, size=32, seed=3, split="test")
    assert sum(torch.equal(a[i][0], c[i][0]) for i in range(50)) == 0
    assert sum(torch.equal(a[i][0], t[i][0]) for i in range(50)) == 0
    assert torch.equal(a[-1][0], a[49][0])


def test_shapes_labels_balanced_and_nuisances_vary():
    ds = D.Shapes(600, size=32, seed=0)
    assert Counter(ds.targets) == {k: 100 for k in range(len(D.SHAPES))}
    assert [ds[i][1] for i in range(12)] == ds.targets[:12]
    imgs = torch.stack([ds[i][0] for i in range(120)]).float() / 255  # (120, 3, 32, 32)
    assert imgs.shape[1:] == (3, 32, 32)
    mean_colour = imgs.mean(dim=(2, 3))
    assert (mean_colour.std(dim=0) > 0.1).all()  # colours vary across items
    # items of one class differ (position, scale, colour, texture)
    circles = imgs[::len(D.SHAPES)]
    assert torch.cdist(circles.flatten(1), circles.flatten(1)).fill_diagonal_(1e9).min() > 1.0
    # the foreground stands out: every image has a strong edge somewhere
    edge = (imgs[:, :, :, 1:] - imgs[:, :, :, :-1]).abs().amax(dim=(1, 2, 3))
    assert (edge > 0.2).all()


def test_shapes_are_shapes():
    """The label is in the pixels. The foreground coverage alone identifies the shape: a 1-nearest-
    neighbour classifier on translation-invariant features (FFT magnitude) of 300 masks recognises the
    shape of 120 unseen ones far above chance (1/6). And the image shows that foreground: its pixels
    inside the shape differ from those outside."""
    ds = D.Shapes(420, size=32, seed=1)
    masks, labels, contrast = [], [], []
    for i in range(420):
        img, mask, label = ds.render(i)
        inside, outside = img[mask > 0.99].mean(axis=0), img[mask < 0.01].mean(axis=0)
        contrast.append(np.linalg.norm(inside - outside))
        masks.append(torch.as_tensor(mask, dtype=torch.float32))
        labels.append(label)
    assert np.quantile(contrast, 0.05) > 0.2
    y = torch.tensor(labels)
    feats = torch.fft.fft2(torch.stack(masks)).abs().flatten(1)
    feats = feats / feats.norm(dim=1, keepdim=True)
    pred = y[:300][torch.cdist(feats[300:], feats[:300]).argmin(dim=1)]
    assert (pred == y[300:]).float().mean() > 0.8


def test_shapes_any_size_costs_nothing():
    huge = D.Shapes(10**12, size=32, seed=0)
    assert len(huge) == 10**12
    img, label = huge[10**12 - 1]
    assert img.shape == (3, 32, 32) and label == (10**12 - 1) % 6
    with pytest.raises(IndexError):
        huge[10**12]


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="shapes"):
        D.Shapes(10, shapes=("circle", "blob"))
    with pytest.raises(ValueError, match="size"):
        D.Shapes(10, size=4)
    with pytest.raises(ValueError, match="name"):
        D.build_dataset("mnist")


# ----------------------------------------------------------------------------- multi-view wrapper


def test_multiview_dataset_seeding_is_order_and_worker_independent():
    base = D.Shapes(16, size=16, seed=0)
    ds = D.MultiViewDataset(base, simclr_views(16), seed=7)
    (v0, l0), (v1, _) = ds[0], ds[1]
    torch.rand(3)
    again = ds[0][0]
    assert l0 == 0 and len(v0) == 2 and all(torch.equal(x, y) for x, y in zip(v0, again))
    assert not torch.equal(v0[0], v1[0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0][0], v0[0])
    ds.set_epoch(0)
    serial = next(iter(DataLoader(ds, batch_size=16, shuffle=False)))
    parallel = next(iter(DataLoader(ds, batch_size=16, shuffle=False, num_workers=2)))
    assert all(torch.equal(a, b) for a, b in zip(serial[0], parallel[0]))
    assert torch.equal(serial[1], parallel[1])


def test_multiview_dataset_unseeded_uses_the_global_generator():
    ds = D.MultiViewDataset(D.Shapes(4, size=16), simclr_views(16))
    torch.manual_seed(0)
    a = ds[0][0]
    torch.manual_seed(0)
    b = ds[0][0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(TypeError, match="views"):
        D.MultiViewDataset(D.Shapes(4), views=3)
