"""The batched device pipeline (mvssl_core.gpu_views) against the CPU one (mvssl_core.views), on CPU tensors.

Same recipes (read off the CPU transforms), same output distributions on a fixed image: crop area and aspect
ratio, flip, grayscale and solarisation rates, colour-jitter and blur statistics (two-sample
Kolmogorov-Smirnov distances), and JPEG decoding equal to PIL's within JPEG tolerance.
"""

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from mvssl_core import gpu_views, views
from mvssl_core.gpu_views import GpuMultiView, ViewSpec

N = 1500  # samples per distribution test
KS_MAX = 0.08  # two-sample KS critical value at alpha ~ 1e-4 for n = m = 1500 is ~0.07; fixed seeds


def ks(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov distance (of values rounded to 1e-5: atoms, e.g. the untouched image's
    statistic, must not split on float32 summation order)."""
    a, b = (np.sort(np.round(np.asarray(x, dtype=np.float64), 5)) for x in (a, b))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                        - np.searchsorted(b, grid, side="right") / len(b)).max())


def rate_ok(k_gpu: int, p: float, n: int) -> bool:
    return abs(k_gpu / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A fixed 32x32 colour image: gradients, a bright square, asymmetric left/right."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    img = torch.stack([x, y, 0.5 * (1 - x) + 0.3 * torch.sin(6 * y) ** 2, ], 0)
    img[:, 4:12, 20:28] = torch.tensor([0.9, 0.2, 0.6])[:, None, None]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def _cpu_outputs(t, img, n, seed=0):
    torch.manual_seed(seed)
    return torch.stack([t(img) for _ in range(n)])


def _gpu_outputs(t, img, n, seed=0):
    spec = ViewSpec.from_transform(t)
    gen = torch.Generator().manual_seed(seed)
    return GpuMultiView([spec])(img[None].expand(n, -1, -1, -1).contiguous(), generator=gen)[0]


# identity crop (full square image at its own size): only the per-pixel augmentations act
def _only(**kw):
    base = dict(scale=(1.0, 1.0), flip=0.0, jitter_p=0.0, grayscale_p=0.0, normalize=None)
    base.update(kw)
    t = views.view_transform(32, **base)
    t.transforms[1].ratio = (1.0, 1.0)  # square crops: the identity on the square image
    t.transforms[1]._log_ratio = torch.log(torch.tensor(t.transforms[1].ratio))
    return t


# ---------------------------------------------------------------------------------------------
# recipes and shapes


@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "swav", "deepcluster"])
def test_views_have_the_cpu_shapes_and_dtypes(name, image):
    cpu = views.build_views(name, 64)
    gpu = GpuMultiView.from_cpu(cpu)
    ref = cpu(image)
    images = [torch.randint(0, 256, (3, 70 + 5 * i, 90 - 3 * i), dtype=torch.uint8) for i in range(3)]
    for batch in (images, torch.stack([image] * 3)):  # images of different sizes, and a stacked batch
        out = gpu(batch, generator=torch.Generator().manual_seed(0))
        assert len(out) == len(ref)
        for o, r in zip(out, ref):
            assert o.shape == (3, *r.shape) and o.dtype == r.dtype == torch.float32
            assert torch.isfinite(o).all()


def test_specs_are_read_off_the_cpu_recipes():
    g1, g2, *local = GpuMultiView.from_cpu(views.dino_views(224)).specs
    assert (g1.size, g2.size, len(local), local[0].size) == (224, 224, 8, 96)
    assert (g1.scale, local[0].scale) == ((0.4, 1.0), (0.05, 0.4))
    assert (g1.blur_p, g2.blur_p, local[0].blur_p) == (1.0, 0.1, 0.5)
    assert (g1.solarize_p, g2.solarize_p) == (0.0, 0.2)
    assert g1.blur_kernel == local[0].blur_kernel == 23
    s = GpuMultiView.from_cpu(views.simclr_views(224)).specs[0]
    assert s.brightness == pytest.approx((0.2, 1.8)) and s.hue == pytest.approx((-0.2, 0.2))
    assert (s.jitter_p, s.grayscale_p, s.flip, s.mean) == (0.8, 0.2, 0.5, views.IMAGENET_MEAN)
    assert GpuMultiView.from_cpu(views.simclr_views(32)).specs[0].blur_p == 0.0  # small images: no blur


def test_unknown_transform_is_refused():
    with pytest.raises(ValueError, match="no GPU version of RandomRotation"):
        ViewSpec.from_transform(v2.Compose([v2.RandomResizedCrop(8), v2.RandomRotation(10)]))
    with pytest.raises(ValueError, match="no RandomResizedCrop"):
        ViewSpec.from_transform(v2.Compose([v2.ToImage()]))


def test_same_generator_seed_same_views(image):
    gpu = GpuMultiView.from_cpu(views.byol_views(32))
    a = gpu([image] * 4, generator=torch.Generator().manual_seed(3))
    b = gpu([image] * 4, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], a[0][1])  # per-sample parameters


def test_batch_generator_is_a_function_of_seed_step_micro_rank():
    draw = lambda *a: torch.rand(4, generator=gpu_views.batch_generator("cpu", *a))  # noqa: E731
    assert torch.equal(draw(0, 5, 1, 2), draw(0, 5, 1, 2))
    others = [draw(1, 5, 1, 2), draw(0, 6, 1, 2), draw(0, 5, 0, 2), draw(0, 5, 1, 3)]
    assert not any(torch.equal(draw(0, 5, 1, 2), o) for o in others)


# ---------------------------------------------------------------------------------------------
# crops


@pytest.mark.parametrize("hw,scale", [((300, 400), (0.08, 1.0)), ((224, 224), (0.05, 0.4)), ((90, 300), (0.5, 1.0))])
def test_crop_boxes_follow_random_resized_crop(hw, scale):
    h, w = hw
    t = v2.RandomResizedCrop(32, scale=scale)
    torch.manual_seed(0)
    dummy = torch.zeros(1, h, w)
    cpu = np.array([[p["left"], p["top"], p["width"], p["height"]]
                    for p in (t.make_params([dummy]) for _ in range(N))], dtype=np.float64)
    boxes = gpu_views.crop_boxes(torch.tensor([[h, w]], dtype=torch.float32).expand(N, 2), scale, t.ratio,
                                 torch.Generator().manual_seed(0)).numpy()
    gpu = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).astype(np.float64)
    assert (gpu[:, 0] >= 0).all() and (gpu[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all() and (gpu[:, 2:] >= 1).all()
    assert np.allclose(gpu, np.round(gpu))
    for stat in (lambda b: b[:, 2] * b[:, 3] / (h * w),          # area fraction
                 lambda b: np.log(b[:, 2] / b[:, 3]),            # log aspect ratio
                 lambda b: (b[:, 0] + b[:, 2] / 2) / w,          # centre x
                 lambda b: (b[:, 1] + b[:, 3] / 2) / h):         # centre y
        assert ks(stat(cpu), stat(gpu)) < KS_MAX
    # the share of centre-crop fallbacks (a wide image with large crops falls back often)
    fallback = lambda b: np.mean((b[:, 2] == b[:, 2].max()) & (b[:, 3] == b[:, 3].max()))  # noqa: E731
    assert abs(fallback(cpu) - fallback(gpu)) < 0.05


def test_crop_fallback_is_torchvision_centre_crop():
    # no try can fit a crop of >= 90% area with a 1:1 ratio into a 10 x 300 image
    t = v2.RandomResizedCrop(8, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    p = t.make_params([torch.zeros(1, 10, 300)])
    box = gpu_views.crop_boxes(torch.tensor([[10.0, 300.0]]), (0.9, 1.0), (1.0, 1.0)).tolist()[0]
    assert box == [p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]]


def test_full_image_crop_is_the_identity(image):
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    out = gpu_views.resized_crops([image], [box], [32])[0][0]
    assert torch.allclose(out, image.float() / 255, atol=1e-6)
    # a downscaled crop matches the CPU anti-aliased resize within a few grey levels
    down = gpu_views.resized_crops([image], [box], [16])[0][0]
    cpu = v2.functional.resize(image.float() / 255, [16, 16], antialias=True)
    assert (down - cpu).abs().mean() < 0.02


# ---------------------------------------------------------------------------------------------
# per-pixel augmentations: rates and statistics against the CPU pipeline


def _rates(cpu, gpu, detect, p):
    k_cpu, k_gpu = int(detect(cpu).sum()), int(detect(gpu).sum())
    assert rate_ok(k_cpu, p, N), k_cpu / N  # the detector sees the CPU pipeline's rate
    assert rate_ok(k_gpu, p, N), k_gpu / N


def test_flip_rate(image):
    t = _only(flip=0.5)
    flipped = image.flip(-1).float() / 255
    detect = lambda x: (x - flipped).abs().amax(dim=(1, 2, 3)) < 1e-6  # noqa: E731
    _rates(_cpu_outputs(t, image, N), _gpu_outputs(t, image, N), detect, 0.5)


def test_grayscale_rate(image):
    t = _only(grayscale_p=0.2)
    detect = lambda x: (x - x[:, :1]).abs().amax(dim=(1, 2, 3)) < 1e-6  # noqa: E731
    cpu, gpu = _cpu_outputs(t, image, N), _gpu_outputs(t, image, N)
    _rates(cpu, gpu, detect, 0.2)
    gray = gpu[detect(gpu)][0]
    assert torch.allclose(gray, cpu[detect(cpu)][0], atol=1e-5)  # the same luma weights


def test_solarize_rate(image):
    t = _only(solarize_p=0.2)
    orig = image.float() / 255
    detect = lambda x: (x - orig).abs().amax(dim=(1, 2, 3)) > 1e-6  # noqa: E731
    cpu, gpu = _cpu_outputs(t, image, N), _gpu_outputs(t, image, N)
    _rates(cpu, gpu, detect, 0.2)
    assert torch.allclose(gpu[detect(gpu)][0], cpu[detect(cpu)][0], atol=1e-6)


def _colour_stats(x):
    gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return {
        "brightness": gray.mean(dim=(1, 2)),
        "contrast": gray.std(dim=(1, 2)),
        "saturation": (x.amax(1) - x.amin(1)).mean(dim=(1, 2)),
        "red share": (x[:, 0].mean(dim=(1, 2)) / x.mean(dim=(1, 2, 3)).clamp_min(1e-6)),
    }


@pytest.mark.parametrize("jitter", [(0.8, 0.8, 0.8, 0.2), (0.4, 0.4, 0.2, 0.1)])
def test_colour_jitter_statistics(jitter, image):
    t = _only(jitter=jitter, jitter_p=0.8)
    cpu, gpu = _cpu_outputs(t, image, N), _gpu_outputs(t, image, N)
    assert gpu.min() >= 0 and gpu.max() <= 1
    untouched = lambda x: (x - image.float() / 255).abs().amax(dim=(1, 2, 3)) < 1e-6  # noqa: E731
    _rates(cpu, gpu, untouched, 0.2)
    sc, sg = _colour_stats(cpu), _colour_stats(gpu)
    for k in sc:
        assert ks(sc[k], sg[k]) < KS_MAX, k
        assert abs(float(sc[k].mean() - sg[k].mean())) < 0.02 * float(sc[k].std()) + 0.01, k


def test_colour_jitter_equals_torchvision_for_every_order(image):
    # every one of the 24 orders, each sample with its own factors: sample by sample, torchvision's own transform
    import itertools

    orders = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4): the op run at each step
    n = len(orders)
    gen = torch.Generator().manual_seed(0)
    factors = 0.2 + 1.6 * torch.rand(n, 3, generator=gen)
    hue = 0.4 * torch.rand(n, generator=gen) - 0.2
    apply = torch.arange(n) % 5 != 0  # some samples are left alone
    x = image.float()[None].expand(n, -1, -1, -1) / 255
    out = gpu_views.color_jitter(x, factors, hue, torch.argsort(orders, dim=1), apply)
    jitter = v2.ColorJitter(0.8, 0.8, 0.8, 0.2)
    for i in range(n):
        params = dict(fn_idx=orders[i], brightness_factor=float(factors[i, 0]), contrast_factor=float(factors[i, 1]),
                      saturation_factor=float(factors[i, 2]), hue_factor=float(hue[i]))
        ref = jitter.transform(x[i], params) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, atol=2e-5, rtol=0, msg=f"order {orders[i].tolist()}")


def test_one_jitter_op_has_the_cpu_factor_range(image):
    # brightness alone: the output's mean grey level / the input's = the factor (no clamping on this image)
    img = (image.float() * 0.5).round().to(torch.uint8)
    t = _only(jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0)
    gpu = _gpu_outputs(t, img, N)
    factor = gpu.mean(dim=(1, 2, 3)) / (img.float() / 255).mean()
    assert factor.min() >= 0.6 - 1e-4 and factor.max() <= 1.4 + 1e-4
    assert ks(factor, np.random.default_rng(0).uniform(0.6, 1.4, N)) < KS_MAX


def test_blur_statistics(image):
    t = _only(blur_p=0.5, blur_size=64)  # a 7-px kernel, sigma ~ U(0.1, 2)
    cpu, gpu = _cpu_outputs(t, image, N), _gpu_outputs(t, image, N)
    sharp = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))  # noqa: E731
    assert ks(sharp(cpu), sharp(gpu)) < KS_MAX
    sigma = torch.tensor([1.3])
    ref = v2.functional.gaussian_blur(image.float()[None] / 255, [7, 7], [1.3, 1.3])
    assert torch.allclose(gpu_views.gaussian_blur(image.float()[None] / 255, sigma, 7), ref, atol=1e-5)


def test_full_simclr_view_statistics(image):
    t = views.simclr_views(32, blur=True).transforms[0]  # crops, flips, jitter, grayscale, blur, normalise
    cpu, gpu = _cpu_outputs(t, image, N), _gpu_outputs(t, image, N)
    for c in range(3):
        for stat in (lambda x: x[:, c].mean(dim=(1, 2)), lambda x: x[:, c].std(dim=(1, 2))):
            assert ks(stat(cpu), stat(gpu)) < KS_MAX + 0.02  # + the uint8-vs-float resampling difference


# ---------------------------------------------------------------------------------------------
# bytes and decoding


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _smooth(h=48, w=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 / w, y * 255 / h, 128 + 60 * np.sin(x / 5)], -1).astype(np.uint8)


def test_decode_equals_pil_within_jpeg_tolerance():
    files = [_jpeg(_smooth()), _jpeg(_smooth(40, 30)), _jpeg(_smooth()[..., 0])]  # the last one is grayscale
    out = gpu_views.decode_batch([torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files], "cpu")
    for f, im in zip(files, out):
        ref = torch.from_numpy(np.array(Image.open(io.BytesIO(f)).convert("RGB"))).permute(2, 0, 1)
        assert im.dtype == torch.uint8 and im.shape == ref.shape
        diff = (im.int() - ref.int()).abs()
        assert diff.float().mean() < 1.0 and diff.max() <= 8


def test_decode_falls_back_for_png_and_replaces_broken_files(caplog):
    buf = io.BytesIO()
    Image.fromarray(_smooth()).save(buf, format="PNG")
    data = [torch.frombuffer(bytearray(x), dtype=torch.uint8)
            for x in (_jpeg(_smooth()), buf.getvalue(), b"not an image at all")]
    out = gpu_views.decode_batch(data, "cpu")
    assert len(out) == 3 and torch.equal(out[1], torch.from_numpy(_smooth()).permute(2, 0, 1))
    assert torch.equal(out[2], out[0]) and "undecodable" in caplog.text


def test_one_odd_file_sends_only_itself_to_the_cpu_decoder(monkeypatch):
    """A PNG in a batch of JPEGs: the JPEGs are still decoded by decode_jpeg (nvJPEG on CUDA), only the PNG by the
    CPU's decode_image (before: the whole batch was decoded again on the CPU, issue 13 item 9)."""
    buf = io.BytesIO()
    Image.fromarray(_smooth()).save(buf, format="PNG")
    data = [torch.frombuffer(bytearray(x), dtype=torch.uint8)
            for x in (_jpeg(_smooth()), buf.getvalue(), _jpeg(_smooth(40, 30)), _jpeg(_smooth()))]
    on_cpu = []
    decode_image = gpu_views.decode_image
    monkeypatch.setattr(gpu_views, "decode_image", lambda d, **kw: on_cpu.append(len(d)) or decode_image(d, **kw))
    out = gpu_views.decode_batch(data, "cpu")
    assert on_cpu == [len(data[1])]
    assert [tuple(im.shape) for im in out] == [(3, 48, 64), (3, 48, 64), (3, 40, 30), (3, 48, 64)]
    assert torch.equal(out[1], torch.from_numpy(_smooth()).permute(2, 0, 1))


def test_jpeg_bytes_dataset_and_collate(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            (tmp_path / c / f"{i}.jpg").write_bytes(_jpeg(_smooth(40 + i, 50)))
    ds = gpu_views.JpegBytes(tmp_path)
    assert len(ds) == 6 and ds.classes == ["a", "b"]
    data, labels, indices = next(iter(DataLoader(ds, batch_size=4, collate_fn=gpu_views.collate_bytes)))
    assert len(data) == 4 and data[0].dtype == torch.uint8 and data[0].dim() == 1
    assert labels.tolist() == [0, 0, 0, 1] and indices.tolist() == [0, 1, 2, 3]
    gpu = GpuMultiView.from_cpu(views.swav_views(32, n_local=2))
    out = gpu(gpu_views.decode_batch(data, "cpu"), generator=torch.Generator().manual_seed(0))
    assert [tuple(o.shape) for o in out] == [(4, 3, 32, 32)] * 2 + [(4, 3, 14, 14)] * 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gpu_views.JpegBytes(tmp_path / "missing")


def test_jpeg_bytes_reach_the_training_process_from_dataloader_workers(tmp_path):
    """Issue 13, finding 1: torchvision.io.read_file's tensors could not be sent from a worker ("Bad file
    descriptor" in its feeder thread, seen on CPU and on an H200), so a DataLoader with workers waited
    forever. The bytes arrive, equal to the files, with 2 workers and a timeout that would fire instead."""
    files = []
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            files.append(tmp_path / c / f"{i}.jpg")
            files[-1].write_bytes(_jpeg(_smooth(40 + i, 50)))
    loader = DataLoader(gpu_views.JpegBytes(tmp_path), batch_size=3, num_workers=2, timeout=30,
                        collate_fn=gpu_views.collate_bytes)
    got = [(bytes(d.numpy()), i) for data, _, indices in loader for d, i in zip(data, indices.tolist())]
    assert sorted(i for _, i in got) == list(range(8))
    assert all(b == files[i].read_bytes() for b, i in got)


def test_jpeg_bytes_skips_a_file_that_became_unreadable(tmp_path, monkeypatch, caplog):
    """Issue 15: a file that cannot be opened after the folder was listed (permissions, a file gone) is
    logged and handed on empty, so decode_batch replaces it like an undecodable one; it used to raise in
    the worker and stop the run."""
    import builtins
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            (tmp_path / c / f"{i}.jpg").write_bytes(_jpeg(_smooth(40 + i, 50)))
    ds = gpu_views.JpegBytes(tmp_path)
    bad, real_open = str(tmp_path / "b" / "1.jpg"), builtins.open

    def guarded(file, *args, **kwargs):
        if str(file) == bad:
            raise PermissionError(13, "Permission denied", bad)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    data, labels, indices = next(iter(DataLoader(ds, batch_size=4, collate_fn=gpu_views.collate_bytes)))
    assert [d.numel() == 0 for d in data] == [False, False, False, True]
    assert "unreadable image file" in caplog.text and bad in caplog.text
    out = gpu_views.decode_batch(data, "cpu")
    assert len(out) == 4 and torch.equal(out[3], out[0])


# ---------------------------------------------------------------------------------------------
# the trainer with data.gpu_pipeline (on CPU tensors: the same code path as on CUDA)


def _train_values(root, out, **top) -> dict:
    values = {
        "method": "simclr",
        "hyper": {"projector": {"hidden": 16, "out": 8}},
        "data": {"name": "imagefolder", "root": str(root), "size": 16, "gpu_pipeline": True},
        "model": {"backbone": "convnet", "kwargs": {"widths": [8, 16]}},
        "optim": {"name": "sgd", "lr": 0.1, "warmup_epochs": 0.0},
        "batch_size": 8, "steps": 4, "num_workers": 0, "log_every": 1, "checkpoint_every": 0,
        "progress": False, "device": "cpu", "out": str(out), "eval": {"knn": False, "linear": False},
    }
    values.update(top)
    return values


def test_trainer_runs_and_resumes_exactly_with_the_gpu_pipeline(tmp_path, monkeypatch):
    from mvssl_core import train as train_mod
    from mvssl_core.config import load_config
    from mvssl_core.runstate import CHECKPOINT_NAME, load_checkpoint
    from mvssl_core.train import train

    decoded = []
    monkeypatch.setattr(train_mod, "decode_batch", lambda d, dev: decoded.append(len(d)) or gpu_views.decode_batch(d, dev))

    root = tmp_path / "images"
    for i in range(16):
        (root / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "train" / f"c{i % 2}" / f"{i}.jpg").write_bytes(_jpeg(np.roll(_smooth(24 + i % 3, 28), i, axis=1)))
    train(load_config(None, base=_train_values(root, tmp_path / "straight")))
    assert decoded == [8] * 4  # every step's batch went through the device pipeline
    cfg = load_config(None, base=_train_values(root, tmp_path / "broken", checkpoint_every=2))
    assert train(cfg, stop_after=3) is None
    train(cfg, resume=True)
    a = load_checkpoint(tmp_path / "broken" / CHECKPOINT_NAME)["model"]
    b = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(math.isfinite(r["loss"]) for r in log)


@pytest.mark.parametrize("data", ["digits", "shapes"])
def test_trainer_batched_views_of_in_memory_images(tmp_path, data):
    """digits / shapes with data.gpu_pipeline: views made a batch at a time from the uint8 tensors
    (no decoding), a run resumes exactly, and the batched views follow the dataset's own images."""
    from mvssl_core.config import load_config
    from mvssl_core.data import build_dataset
    from mvssl_core.build import build_train_set
    from mvssl_core.runstate import CHECKPOINT_NAME, load_checkpoint
    from mvssl_core.train import train

    top = dict(data={"name": data, "size": 16, "n": 40, "gpu_pipeline": True}, batch_size=8)
    cfg = load_config(None, base=_train_values(tmp_path, tmp_path / "straight", **top))
    ds = build_train_set(cfg, gpu_pipeline=True)
    assert isinstance(ds, gpu_views.TensorImages)
    image, label, index = ds[3]
    base = build_dataset(data, split="train", size=16, **({"n": 40} if data == "shapes" else {}))
    assert torch.equal(image, base[3][0]) and label == base[3][1] and index == 3
    batch = torch.stack([ds[i][0] for i in range(8)])
    views = ds.views(batch, generator=torch.Generator().manual_seed(0))
    assert len(views) == 2 and views[0].shape == (8, 3, 16, 16) and views[0].dtype == torch.float32
    assert not torch.equal(views[0], views[1])

    train(cfg)
    broken = load_config(None, base=_train_values(tmp_path, tmp_path / "broken", checkpoint_every=2, **top))
    assert train(broken, stop_after=3) is None
    train(broken, resume=True)
    a = load_checkpoint(tmp_path / "broken" / CHECKPOINT_NAME)["model"]
    b = load_checkpoint(tmp_path / "straight" / CHECKPOINT_NAME)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tensor_images_refuses_non_uint8_items():
    with pytest.raises(TypeError, match="uint8"):
        gpu_views.TensorImages([(torch.zeros(3, 8, 8), 0)])[0]


@pytest.mark.parametrize("data,value,match", [("cifar10", True, "needs JPEG files or in-memory"),
                                              ("imagefolder", "on", "must be true, false or 'auto'")])
def test_bad_gpu_pipeline_config_is_refused(tmp_path, data, value, match):
    from mvssl_core.config import ConfigError, load_config, validate

    values = _train_values(tmp_path, tmp_path / "run")
    values["data"] = {"name": data, "gpu_pipeline": value}
    with pytest.raises(ConfigError, match=match):
        validate(load_config(None, base=values))
