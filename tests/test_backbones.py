"""Backbones: feature shapes and dims, the small-image stem, channels-last equivalence, per-sample norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvssl_core.backbones import ConvNet, build_backbone, resnet


def _images(n, size, channels=3, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_small_stem_features(name, dim):
    model, feature_dim = build_backbone(name, small_images=True)
    assert feature_dim == dim == model.feature_dim
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity) and isinstance(model.fc, nn.Identity)
    model.eval()
    with torch.no_grad():
        out = model(_images(2, 16))
    assert out.shape == (2, dim) and torch.isfinite(out).all()


def test_resnet_imagenet_stem_and_in_channels():
    model = resnet("resnet18")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    gray = resnet("resnet18", small_images=True, in_channels=1).eval()
    with torch.no_grad():
        assert gray(_images(2, 16, channels=1)).shape == (2, 512)
    with pytest.raises(ValueError, match="name"):
        resnet("resnet34")


def test_small_stem_keeps_resolution():
    """The CIFAR stem does not downsample: the last stage of ResNet-18 sees 4x4 maps at 32 px, not 1x1."""
    seen = {}
    for small in (True, False):
        model = resnet("resnet18", small_images=small).eval()
        model.layer4.register_forward_hook(lambda m, i, o, small=small: seen.__setitem__(small, o.shape[-1]))
        with torch.no_grad():
            model(_images(1, 32))
    assert seen == {True: 4, False: 1}


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_convnet_shapes(size, norm):
    model = ConvNet(widths=(8, 16, 32), norm=norm)
    out = model(_images(4, size))
    assert out.shape == (4, 32) and model.feature_dim == 32
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name,kw", [("convnet", {}), ("resnet18", {"small_images": True})])
def test_channels_last_gives_the_same_features(name, kw):
    model, _ = build_backbone(name, **kw)
    model.eval()
    x = _images(2, 16, seed=1)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_group_norm_convnet_is_per_sample():
    """With norm="group" a sample's features do not depend on the rest of the batch (training mode),
    so a batch split across processes gives the same features as one process; BatchNorm does not."""
    x = _images(6, 16, seed=2)
    for norm, independent in (("group", True), ("batch", False)):
        torch.manual_seed(0)
        model = ConvNet(widths=(8, 16), norm=norm).train()
        whole = model(x)
        halves = torch.cat([model(x[:3]), model(x[3:])])
        assert torch.allclose(whole, halves, atol=1e-5) == independent


def test_build_backbone_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="name"):
        build_backbone("vit")
    with pytest.raises(ValueError, match="norm"):
        ConvNet(norm="layer")
    with pytest.raises(TypeError):
        build_backbone("convnet", small_images=True)
