"""Encoders: torchvision ResNet-18/50 (optionally with a small-image stem) and a small ConvNet.

Every backbone maps images ``(N, C, H, W)`` to features ``(N, feature_dim)`` and carries its
``feature_dim`` as an attribute; ``build_backbone`` returns ``(module, feature_dim)``, the pair a
method's builder takes. All of them run in ``torch.channels_last`` memory format unchanged
(``model.to(memory_format=torch.channels_last)``).

[0] He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
[1] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
    Appendix B.9: for CIFAR-10 "we replace the first 7x7 Conv of stride 2 with 3x3 Conv of stride 1,
    and also remove the first max pooling operation".
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from mvssl_core import _checks

RESNETS = {"resnet18": 512, "resnet50": 2048}


def resnet(
    name: str = "resnet18",
    *,
    small_images: bool = False,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> nn.Module:
    """A randomly initialised torchvision ResNet [0] with its classifier replaced by ``nn.Identity``.

    Args:
        name: "resnet18" (feature_dim 512) or "resnet50" (2048).
        small_images: use the CIFAR stem of [1] (3x3 conv, stride 1, no max-pool) for images of
            32-96 pixels; the ImageNet stem (7x7 stride 2 + max-pool) otherwise.
        in_channels: channels of the input images.
        zero_init_residual: zero the last BatchNorm of each residual branch (torchvision's option).

    Returns:
        The module, with attribute ``feature_dim``; forward gives ``(N, feature_dim)``.
    """
    _checks.choice(name, "name", tuple(RESNETS))
    _checks.positive_int(in_channels, "in_channels")
    model = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    if small_images:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if small_images or in_channels != 3:
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Identity()
    model.feature_dim = RESNETS[name]
    return model


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class ConvNet(nn.Module):
    """A small VGG-style encoder for 8-64 pixel images (digits, generated shapes, CIFAR on a laptop).

    Stages of [conv3x3 - norm - ReLU] x 2; every stage after the first halves the resolution
    (stride-2 first conv); global average pooling gives ``(N, widths[-1])``.

    Args:
        in_channels: channels of the input images.
        widths: channels of each stage; ``feature_dim = widths[-1]``.
        norm: "batch" (BatchNorm2d), "group" (GroupNorm, 8 groups: per-sample, so a batch split across
            processes gives the same features as one process) or "none".
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch"):
        super().__init__()
        _checks.positive_int(in_channels, "in_channels")
        _checks.choice(norm, "norm", ("batch", "group", "none"))
        if len(widths) < 1:
            raise ValueError("widths must name at least one stage")
        for w in widths:
            _checks.positive_int(w, "widths[i]")
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            bias = norm == "none"
            layers += [
                nn.Conv2d(c_in, w, 3, stride=stride, padding=1, bias=bias),
                _norm(norm, w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, stride=1, padding=1, bias=bias),
                _norm(norm, w),
                nn.ReLU(inplace=True),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


BACKBONES = ("resnet18", "resnet50", "convnet")


def build_backbone(name: str, **kwargs) -> tuple[nn.Module, int]:
    """Build a backbone by name ("resnet18", "resnet50", "convnet") and return ``(module, feature_dim)``.

    ``kwargs`` go to ``resnet`` (small_images, in_channels, zero_init_residual) or ``ConvNet``
    (in_channels, widths, norm).
    """
    _checks.choice(name, "name", BACKBONES)
    model = ConvNet(**kwargs) if name == "convnet" else resnet(name, **kwargs)
    return model, model.feature_dim
