"""Multi-view pipelines: view counts and sizes, the recipes' probabilities and strengths, size scaling,
seeding, and bad input."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import to_pil_image

from mvssl_core import views as V


def _image(size=40, seed=0):
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _find(transform, cls):
    """The transforms of type ``cls`` in a Compose, with the probability of the RandomApply around them."""
    found = []
    for t in transform.transforms:
        if isinstance(t, v2.RandomApply):
            found += [(inner, t.p) for inner in t.transforms if isinstance(inner, cls)]
        elif isinstance(t, cls):
            found.append((t, getattr(t, "p", 1.0)))
    return found


@pytest.mark.parametrize(
    "name,kw,sizes",
    [
        ("simclr", {}, [32, 32]),
        ("simclr", {"n_views": 4}, [32] * 4),
        ("byol", {}, [32, 32]),
        ("dino", {}, [32, 32] + [14] * 8),
        ("dino", {"n_local": 2, "local_size": 12}, [32, 32, 12, 12]),
        ("swav", {}, [32, 32] + [14] * 6),
        ("deepcluster", {"n_local": 0}, [32, 32]),
    ],
)
def test_view_counts_and_sizes(name, kw, sizes):
    torch.manual_seed(0)
    pipeline = V.build_views(name, 32, **kw)
    assert len(pipeline) == len(sizes)
    for img in (_image(), to_pil_image(_image()), _image().float() / 255):  # uint8 tensor, PIL, float tensor
        out = pipeline(img)
        assert [tuple(v.shape) for v in out] == [(3, s, s) for s in sizes]
        assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in out)
        assert all(torch.isfinite(v).all() for v in out)


def test_dino_at_imagenet_size():
    out = V.dino_views(224, n_local=2)(_image(256))
    assert [v.shape[-1] for v in out] == [224, 224, 96, 96]


def test_views_of_one_image_differ_and_normalize_none_is_unit_range():
    torch.manual_seed(0)
    a, b = V.simclr_views(32, normalize=None)(_image())
    assert not torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    torch.manual_seed(0)
    n1, _ = V.simclr_views(32)(_image())
    assert n1.min() < 0  # ImageNet normalisation moves values below zero


def test_blur_is_scaled_to_the_size_and_off_for_tiny_images():
    assert V.blur_kernel_size(224) == 23 and V.blur_kernel_size(96) == 9 and V.blur_kernel_size(32) == 3
    for size, on in ((32, False), (64, True), (224, True)):
        t1 = V.simclr_views(size).transforms[0]
        assert bool(_find(t1, v2.GaussianBlur)) == on
    (blur, p), = _find(V.simclr_views(224).transforms[0], v2.GaussianBlur)
    assert blur.kernel_size == (23, 23) and p == 0.5 and tuple(blur.sigma) == (0.1, 2.0)
    assert _find(V.simclr_views(32, blur=True).transforms[0], v2.GaussianBlur)
    assert not _find(V.simclr_views(224, blur=False).transforms[0], v2.GaussianBlur)


def test_simclr_colour_strength():
    for s in (1.0, 0.5):
        (jitter, p), = _find(V.simclr_views(32, strength=s).transforms[0], v2.ColorJitter)
        assert p == 0.8
        assert jitter.brightness == pytest.approx((1 - 0.8 * s, 1 + 0.8 * s))
        assert jitter.saturation == pytest.approx((1 - 0.8 * s, 1 + 0.8 * s))
        assert jitter.hue == pytest.approx((-0.2 * s, 0.2 * s))
    (_, p), = _find(V.simclr_views(32).transforms[0], v2.RandomGrayscale)
    assert p == 0.2


def test_byol_is_asymmetric():
    t1, t2 = V.byol_views(224).transforms
    assert [p for _, p in _find(t1, v2.GaussianBlur)] == [1.0]
    assert [p for _, p in _find(t2, v2.GaussianBlur)] == [0.1]
    assert _find(t1, v2.RandomSolarize) == []
    assert [p for _, p in _find(t2, v2.RandomSolarize)] == [0.2]
    (jitter, _), = _find(t1, v2.ColorJitter)
    assert jitter.brightness == pytest.approx((0.6, 1.4)) and jitter.saturation == pytest.approx((0.8, 1.2))


def test_dino_crop_scales():
    pipeline = V.dino_views(224, n_local=3)
    crops = [_find(t, v2.RandomResizedCrop)[0][0] for t in pipeline.transforms]
    assert [c.scale for c in crops] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 3
    assert [tuple(c.size) for c in crops] == [(224, 224)] * 2 + [(96, 96)] * 3
    local_blur = _find(pipeline.transforms[2], v2.GaussianBlur)
    assert local_blur[0][1] == 0.5 and local_blur[0][0].kernel_size == (23, 23)


def test_grayscale_probability_is_realised():
    """The pipeline draws what it says: with only RandomGrayscale(0.2) active on a coloured image, about
    20% of 400 views come out gray (binomial sd 0.02; tolerance 3.5 sd)."""
    t = V.view_transform(8, scale=(1.0, 1.0), flip=0.0, jitter_p=0.0, grayscale_p=0.2, normalize=None)
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[0] = 200
    torch.manual_seed(0)
    gray = sum(bool((v[0] == v[1]).all()) for v in (t(img) for _ in range(400)))
    assert abs(gray / 400 - 0.2) < 0.07


def test_global_seed_fixes_the_views():
    pipeline = V.byol_views(32)
    torch.manual_seed(5)
    a = pipeline(_image())
    torch.manual_seed(5)
    b = pipeline(_image())
    c = pipeline(_image())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_seeded_context_fixes_views_and_restores_the_global_generator():
    pipeline = V.simclr_views(32)
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    with V.seeded(V.item_seed(0, 0, 7)):
        a = pipeline(_image())
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.rand(10)  # move the global stream: the seeded views must not care
    with V.seeded(V.item_seed(0, 0, 7)):
        b = pipeline(_image())
    with V.seeded(V.item_seed(0, 1, 7)):  # the next epoch gets new views
        c = pipeline(_image())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert len({V.item_seed(0, 0, i) for i in range(1000)}) == 1000


def test_eval_transform():
    t = V.eval_transform(32)
    assert t(_image(40)).shape == (3, 32, 32)
    assert V.eval_transform(224)(_image(300)).shape == (3, 224, 224)
    torch.testing.assert_close(t(_image(32)), t(_image(32)))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: V.simclr_views(0), "size"),
        (lambda: V.view_transform(32, grayscale_p=1.5), "grayscale_p"),
        (lambda: V.view_transform(32, scale=(0.5, 0.1)), "scale"),
        (lambda: V.dino_views(32, n_local=-1), "n_local"),
        (lambda: V.build_views("mae", 32), "name"),
        (lambda: V.simclr_views(32, strength=0.0), "strength"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


NAN = float("nan")


@pytest.mark.parametrize(
    "call,error,match",
    [
        # probabilities: bools, strings and None are not numbers in [0, 1]
        (lambda: V.view_transform(32, flip=True), TypeError, "flip"),
        (lambda: V.view_transform(32, jitter_p="0.5"), TypeError, "jitter_p"),
        (lambda: V.view_transform(32, blur_p=None), TypeError, "blur_p"),
        (lambda: V.view_transform(32, solarize_p=NAN), ValueError, "solarize_p"),
        (lambda: V.simclr_views(32, flip=True), TypeError, "flip"),
        # crop scales, under the public name of each recipe
        (lambda: V.view_transform(32, scale=None), TypeError, "scale"),
        (lambda: V.view_transform(32, scale=(0.5,)), ValueError, "scale"),
        (lambda: V.view_transform(32, scale="0.1"), TypeError, "scale"),
        (lambda: V.byol_views(32, scale=(NAN, 1.0)), ValueError, "scale"),
        (lambda: V.dino_views(32, global_scale=(0.5, 0.1)), ValueError, "global_scale"),
        (lambda: V.dino_views(32, local_scale=None), TypeError, "local_scale"),
        (lambda: V.swav_views(32, global_scale=(0.1, 1.5)), ValueError, "global_scale"),
        (lambda: V.swav_views(32, local_scale=(0.0, 0.1)), ValueError, "local_scale"),
        # colour jitter: 4 strengths >= 0, hue <= 0.5 (not torchvision's 'brightness')
        (lambda: V.view_transform(32, jitter=(0.4, 0.4)), ValueError, "jitter"),
        (lambda: V.view_transform(32, jitter="strong"), TypeError, "jitter"),
        (lambda: V.view_transform(32, jitter=(-0.4, 0.4, 0.2, 0.1)), ValueError, "jitter"),
        (lambda: V.view_transform(32, jitter=(NAN, 0.4, 0.2, 0.1)), ValueError, "jitter"),
        (lambda: V.view_transform(32, jitter=(0.4, 0.4, 0.2, 0.6)), ValueError, "jitter"),
        # the blur kernel's side: 0 no longer falls back to size
        (lambda: V.view_transform(32, blur_p=0.5, blur_size=0), ValueError, "blur_size"),
        (lambda: V.view_transform(32, blur_size=True), TypeError, "blur_size"),
        (lambda: V.view_transform(32, blur_size=2.5), TypeError, "blur_size"),
        # normalisation
        (lambda: V.view_transform(32, normalize="imagenet"), TypeError, "normalize"),
        (lambda: V.simclr_views(32, normalize=((0.5,) * 3, (0.0,) * 3)), ValueError, "normalize std"),
        (lambda: V.byol_views(32, normalize=((NAN, 0.5, 0.5), (0.2,) * 3)), ValueError, "normalize mean"),
        (lambda: V.eval_transform(32, normalize=((0.5,) * 3, (0.2,))), ValueError, "normalize"),
        (lambda: V.eval_transform(32, normalize="imagenet"), TypeError, "normalize"),
        # blur flag: True, False or None; 'no' is not False
        (lambda: V.simclr_views(32, blur="no"), TypeError, "blur"),
        (lambda: V.byol_views(32, blur=2), TypeError, "blur"),
        (lambda: V.dino_views(32, blur=0.5), TypeError, "blur"),
        (lambda: V.swav_views(32, blur="False"), TypeError, "blur"),
        # sizes, checked before anything compares them
        (lambda: V.simclr_views("3"), TypeError, "size"),
        (lambda: V.byol_views(None), TypeError, "size"),
        (lambda: V.dino_views("3"), TypeError, "size"),
        (lambda: V.build_views("byol", None), TypeError, "size"),
        (lambda: V.local_crop_size(32, reference_local=0), ValueError, "reference_local"),
        (lambda: V.local_crop_size(32, reference_local=True), TypeError, "reference_local"),
        (lambda: V.local_crop_size(32, reference_local=NAN), TypeError, "reference_local"),
        (lambda: V.eval_transform(32, resize=0), ValueError, "resize"),
        (lambda: V.eval_transform(32, resize="3"), TypeError, "resize"),
        (lambda: V.eval_transform(32, resize=True), TypeError, "resize"),
    ],
)
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "kw,error,match",
    [
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=None), TypeError, "seed"),
        (dict(seed="3"), TypeError, "seed"),  # would hash like 3: a silent alias
        (dict(seed=True), TypeError, "seed"),  # would hash apart from 1
        (dict(epoch=-1), ValueError, "epoch"),
        (dict(epoch=2.5), TypeError, "epoch"),
        (dict(index=None), TypeError, "index"),
        (dict(index=2.0), TypeError, "index"),
        (dict(index=torch.tensor([2])), TypeError, "index"),
        (dict(epoch=torch.tensor(True)), TypeError, "epoch"),
    ],
)
def test_item_seed_refuses_what_would_hash_to_another_stream(kw, error, match):
    with pytest.raises(error, match=match):
        V.item_seed(**{"seed": 0, "epoch": 1, "index": 2, **kw})


def test_item_seed_contract():
    import numpy as np

    s = V.item_seed(3, 1, 7)
    assert 0 <= s < 2**63
    # numpy and 0-dim tensor ints are taken at their value: the same stream as the Python int
    assert V.item_seed(np.int64(3), np.int64(1), np.int64(7)) == s
    assert V.item_seed(torch.tensor(3), 1, torch.tensor(7)) == s
    # negative indices are the run's other streams (train.py: -1 permutation, -2 loader workers)
    assert len({V.item_seed(3, 1, i) for i in (-2, -1, 0, 7)}) == 4


def test_batch_generator_names_its_own_arguments():
    from mvssl_core import gpu_views

    for kw, match in ((dict(step=-1), "step"), (dict(micro=-1), "micro"), (dict(rank=1 << 20), "rank"),
                      (dict(seed=-1), "seed")):
        with pytest.raises(ValueError, match=match):
            gpu_views.batch_generator("cpu", **{"seed": 0, "step": 1, "micro": 0, "rank": 0, **kw})


def test_valid_arguments_from_yaml_and_numpy():
    """Lists (YAML) and numpy floats are valid; ``blur_size`` sets the kernel; one mean/std value applies
    to every channel (torchvision's broadcasting)."""
    import numpy as np

    t = V.view_transform(32, scale=[0.3, 1.0], flip=np.float64(0.25), jitter=[0.4, 0.4, 0.2, 0.1],
                         blur_p=0.5, blur_size=224, normalize=[[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    (crop, _), = _find(t, v2.RandomResizedCrop)
    assert tuple(crop.scale) == (0.3, 1.0)
    (_, p), = _find(t, v2.RandomHorizontalFlip)
    assert p == 0.25
    (blur, _), = _find(t, v2.GaussianBlur)
    assert blur.kernel_size == (23, 23)
    (norm, _), = _find(t, v2.Normalize)
    assert list(norm.mean) == [0.5] * 3 and list(norm.std) == [0.25] * 3
    one = V.view_transform(8, scale=(1.0, 1.0), flip=0.0, jitter_p=0.0, grayscale_p=0.0, normalize=((0.5,), (0.5,)))
    out = one(torch.full((3, 8, 8), 255, dtype=torch.uint8))
    torch.testing.assert_close(out, torch.ones(3, 8, 8))
    assert not _find(V.simclr_views(64, blur=np.bool_(False)).transforms[0], v2.GaussianBlur)
