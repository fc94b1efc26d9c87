"""ImageFolder: folders and files that cannot be read are counted and reported, never dropped in silence;
a split with no readable image is refused with a one-line error (also through the command line).

The tests run as root, for whom no permission bit makes a file unreadable: ``os.scandir`` (what
``os.walk`` lists folders with) and ``open`` are patched to raise ``PermissionError`` for chosen paths."""

from __future__ import annotations

import builtins
import errno
import os
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from mvssl_core import data as D
from mvssl_core.cli import main


def _write_image(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path, "JPEG")


def _split(root, classes=("cat", "dog"), n=3, content=None):
    """root/<class>/<i>.jpg: good JPEGs, or the bytes ``content`` in every file."""
    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            path = root / cls / f"{i}.jpg"
            if content is None:
                _write_image(path, 10 * c + i)
            else:
                path.write_bytes(content)
    return root


def _denied(path) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))


@pytest.fixture
def block_folders(monkeypatch):
    """``block_folders(*paths)``: listing these folders raises PermissionError (as for a folder of mode 000)."""
    real = os.scandir
    blocked: set[str] = set()

    def scandir(path="."):
        if os.path.normpath(os.fspath(path)) in blocked:
            raise _denied(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return lambda *paths: blocked.update(os.path.normpath(os.fspath(p)) for p in paths)


@pytest.fixture
def block_files(monkeypatch):
    """``block_files(*paths)``: opening these files raises PermissionError."""
    real = builtins.open
    blocked: set[str] = set()

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.normpath(os.fspath(file)) in blocked:
            raise _denied(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    return lambda *paths: blocked.update(os.path.normpath(os.fspath(p)) for p in paths)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- unreadable folders


def test_an_unreadable_class_folder_is_counted_and_reported(tmp_path, block_folders):
    root = _split(tmp_path / "train", classes=("bird", "cat", "dog"))
    block_folders(root / "dog")
    with pytest.warns(D.DataWarning) as record:
        ds = D.ImageFolder(root)
    text = " | ".join(str(w.message) for w in record)
    assert f"image folder {root}: 1 folder could not be listed" in text
    assert str(root / "dog") in text and "PermissionError" in text
    assert "1 class with no image: dog" in text
    assert ds.unreadable == [(str(root / "dog"), f"PermissionError: [Errno 13] Permission denied: '{root / 'dog'}'")]
    # the class keeps its label index (the other split numbers it the same); it has no image
    assert ds.classes == ["bird", "cat", "dog"] and sorted(set(ds.targets)) == [0, 1] and len(ds) == 6


def test_an_unreadable_nested_folder_is_counted_and_reported(tmp_path, block_folders):
    root = _split(tmp_path / "train")
    (root / "dog" / "more").mkdir()
    _write_image(root / "dog" / "more" / "x.jpg", 99)
    (root / "cat" / "deep").mkdir()
    block_folders(root / "dog" / "more", root / "cat" / "deep")
    with pytest.warns(D.DataWarning, match=r"2 folders could not be listed") as record:
        ds = D.ImageFolder(root)
    assert [p for p, _ in ds.unreadable] == [str(root / "cat" / "deep"), str(root / "dog" / "more")]
    assert len(ds) == 6 and not any("class with no image" in str(w.message) for w in record)


def test_a_split_whose_folders_are_all_unreadable_is_refused_in_one_line(tmp_path, block_folders):
    root = _split(tmp_path / "train")
    block_folders(root / "cat", root / "dog")
    with pytest.raises(FileNotFoundError) as e:
        D.ImageFolder(root)
    msg = _one_line(e)
    assert msg.startswith(f"image folder {root} holds no readable image: 2 of its folders could not be listed")
    assert str(root / "cat") in msg and "PermissionError" in msg


def test_an_unreadable_root_is_a_one_line_error(tmp_path, block_folders):
    root = _split(tmp_path / "train")
    block_folders(root)
    with pytest.raises(FileNotFoundError) as e:
        D.ImageFolder(root)
    msg = _one_line(e)
    assert msg.startswith(f"image folder {root} cannot be listed (PermissionError: [Errno 13] Permission denied")
    assert "root/<class>/<image>" in msg


def test_an_empty_class_folder_is_reported(tmp_path):
    root = _split(tmp_path / "train")
    (root / "emu").mkdir()
    (root / "emu" / "notes.txt").write_text("no image here")
    with pytest.warns(D.DataWarning, match=r"image folder .*train: 1 class with no image: emu"):
        ds = D.ImageFolder(root)
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 6


def test_a_readable_folder_gives_no_warning(tmp_path):
    root = _split(tmp_path / "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = D.ImageFolder(root)
    assert ds.unreadable == [] and ds.n_skipped == 0 and len(ds) == 6


# ----------------------------------------------------------------------------- unreadable files


@pytest.mark.parametrize("content, reason", [(b"not a jpeg", "UnidentifiedImageError"),
                                             (b"", "UnidentifiedImageError"),
                                             (None, "PermissionError")])
def test_a_split_with_every_image_unreadable_is_refused_at_construction(tmp_path, block_files, content, reason):
    """Before: construction succeeded and the first batch raised a RuntimeError inside the DataLoader."""
    root = _split(tmp_path / "train", n=2, content=content)
    if content is None:
        block_files(*root.glob("*/*.jpg"))
    with pytest.raises(FileNotFoundError) as e:
        D.ImageFolder(root)
    msg = _one_line(e)
    assert msg.startswith(f"image folder {root} holds no readable image: all 4 image files failed to load")
    assert f"{root / 'cat' / '0.jpg'}: {reason}" in msg


def test_unreadable_files_met_at_construction_are_counted(tmp_path, block_files, caplog):
    """Without ``verify`` the first image is decoded at construction; the unreadable ones before it are
    skipped and counted then (and never read again)."""
    root = _split(tmp_path / "train")
    block_files(root / "cat" / "0.jpg")
    (root / "cat" / "1.jpg").write_bytes(b"")
    ds = D.ImageFolder(root, transform=torchvision.transforms.v2.PILToTensor())
    assert ds.n_skipped == 2 and len(ds) == 6
    assert [(p.split("/")[-1], r.split(":")[0]) for p, r in ds.skipped] == [("0.jpg", "PermissionError"),
                                                                            ("1.jpg", "UnidentifiedImageError")]
    assert "skipped 2 unreadable images" in caplog.text
    assert torch.equal(ds[0][0], ds[2][0]) and ds.n_skipped == 2  # item 0 is replaced by the good item 2


def test_verify_counts_unreadable_files(tmp_path, block_files):
    root = _split(tmp_path / "train")
    block_files(root / "dog" / "2.jpg")
    ds = D.ImageFolder(root, verify=True)
    assert len(ds) == 5 and ds.skipped == [(str(root / "dog" / "2.jpg"),
                                            f"PermissionError: [Errno 13] Permission denied: '{root / 'dog' / '2.jpg'}'")]


# ----------------------------------------------------------------------------- command line

_TINY = ["pretrain", "--method", "simclr", "--data", "imagefolder", "--size", "16", "--backbone", "convnet",
         "--steps", "1", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu",
         "--set", "model.kwargs={widths: [8, 16]}", "--set", "hyper.projector={hidden: 16, out: 8}"]


@pytest.mark.parametrize("case, expected", [
    ("corrupt", "holds no readable image: all 4 image files failed to load"),
    ("zero_bytes", "holds no readable image: all 4 image files failed to load"),
    ("unreadable_files", "holds no readable image: all 4 image files failed to load"),
    ("unreadable_root", "cannot be listed (PermissionError"),
    ("unreadable_classes", "holds no readable image: 2 of its folders could not be listed"),
    ("root_is_a_file", "is not a folder"),
    ("no_class_folder", "holds no class sub-folder"),
    ("class_without_images", "holds no readable image"),
])
def test_cli_refuses_an_unreadable_split_in_one_line(tmp_path, capsys, block_folders, block_files, case, expected):
    root = tmp_path / "data" / "train"
    if case in ("corrupt", "zero_bytes"):
        _split(root, n=2, content=b"\xff\xd8\xff garbage" if case == "corrupt" else b"")
    elif case == "unreadable_files":
        block_files(*_split(root, n=2).glob("*/*.jpg"))
    elif case == "unreadable_root":
        block_folders(_split(root, n=2))
    elif case == "unreadable_classes":
        block_folders(*_split(root, n=2).iterdir())
    elif case == "root_is_a_file":
        root.parent.mkdir()
        root.write_text("x")
    elif case == "no_class_folder":
        root.mkdir(parents=True)
    else:
        (root / "cat").mkdir(parents=True)
    rc = main([*_TINY, "--set", f"data.root={root.parent}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("python -m mvssl_core pretrain: error: image folder")
    assert str(root) in lines[0] and expected in lines[0]
