"""Projector, predictor and prototype heads, declared as data.

A head is a small frozen dataclass (its sizes) plus one build function; each method's default
is a module-level constant with the paper's own sentence about it. Sizes scale down with
``dataclasses.replace`` (or a dict of fields, as a config file gives them), e.g. for CPU tests:
``replace(BYOL_PROJECTOR, hidden=64, out=16)``.

[0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR), ICML 2020.
[1] Grill et al., "Bootstrap Your Own Latent" (BYOL), NeurIPS 2020.
[2] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021.
[3] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
    (SwAV; its appendix also defines DeepCluster-v2), NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import _checks as checks

__all__ = [
    "MLPSpec",
    "DINOHeadSpec",
    "PrototypeSpec",
    "build_mlp",
    "DINOHead",
    "WeightNormLinear",
    "Prototypes",
    "as_spec",
    "SIMCLR_PROJECTOR",
    "BYOL_PROJECTOR",
    "BYOL_PREDICTOR",
    "DINO_HEAD",
    "SWAV_PROJECTOR",
    "SWAV_PROTOTYPES",
    "DEEPCLUSTER_PROJECTOR",
    "DEEPCLUSTER_PROTOTYPES",
]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class MLPSpec:
    """An MLP of ``layers`` linear layers: (Linear [-> BN] -> activation) x (layers - 1) -> Linear [-> BN].

    Attributes:
        hidden: width of the hidden layers.
        out: output dimension.
        layers: number of linear layers (>= 1; 1 is a single linear map).
        bn: BatchNorm after each hidden linear layer (those layers then have no bias).
        last_bn: BatchNorm after the last linear layer.
        activation: "relu" or "gelu".
    """

    hidden: int
    out: int
    layers: int = 2
    bn: bool = True
    last_bn: bool = False
    activation: str = "relu"

    def __post_init__(self) -> None:
        checks.positive_int(self.hidden, "hidden")
        checks.positive_int(self.out, "out")
        checks.positive_int(self.layers, "layers")
        checks.boolean(self.bn, "bn")
        checks.boolean(self.last_bn, "last_bn")
        checks.choice(self.activation, "activation", tuple(_ACTIVATIONS))


@dataclass(frozen=True)
class DINOHeadSpec:
    """DINO's head: an MLP to a bottleneck, L2 normalisation, then a weight-normalised linear layer.

    Attributes:
        hidden: width of the MLP's hidden layers.
        bottleneck: output dimension of the MLP (the normalised "projection").
        out: K, the number of output logits.
        layers: linear layers in the MLP.
        bn: BatchNorm in the MLP's hidden layers (DINO's default for ViTs: no).
        activation: "gelu" in DINO.
        norm_last_layer: fix the weight-norm gain g to 1 (DINO's default, for stability).
    """

    hidden: int = 2048
    bottleneck: int = 256
    out: int = 65536
    layers: int = 3
    bn: bool = False
    activation: str = "gelu"
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden", "bottleneck", "out", "layers"):
            checks.positive_int(getattr(self, name), name)
        checks.boolean(self.bn, "bn")
        checks.choice(self.activation, "activation", tuple(_ACTIVATIONS))
        checks.boolean(self.norm_last_layer, "norm_last_layer")


@dataclass(frozen=True)
class PrototypeSpec:
    """``heads`` sets of ``n_prototypes`` learnable unit vectors (a bias-free linear layer each).

    Attributes:
        n_prototypes: K, prototypes per set.
        heads: number of sets (1 for SwAV; 3 for DeepCluster-v2, one k-means each).
    """

    n_prototypes: int = 3000
    heads: int = 1

    def __post_init__(self) -> None:
        checks.positive_int(self.n_prototypes, "n_prototypes")
        checks.positive_int(self.heads, "heads")


# --------------------------------------------------------------------------------------------
# The methods' heads, each with the paper's description (paraphrased; sizes as in the papers).
# --------------------------------------------------------------------------------------------

SIMCLR_PROJECTOR = MLPSpec(hidden=2048, out=128, layers=2, last_bn=True)
"""SimCLR [0], Sec. 2.1 (paraphrased): an MLP with one hidden layer, z = g(h) = W2 ReLU(W1 h).
Hidden width 2048 (ResNet-50's feature size), output 128, BatchNorm after the hidden layer; the
official TensorFlow code (google-research/simclr, ``model_util.projection_head``, v1 and v2) also
batch-normalises the output, without bias, hence ``last_bn=True`` (its last BN has no shift,
``center=False``; ``nn.BatchNorm1d`` here keeps one)."""

BYOL_PROJECTOR = MLPSpec(hidden=4096, out=256, layers=2)
"""BYOL [1], Sec. 3.3 (paraphrased): a linear layer to 4096 units, batch normalisation, ReLU, and a
final linear layer to 256 dimensions."""

BYOL_PREDICTOR = MLPSpec(hidden=4096, out=256, layers=2)
"""BYOL [1], Sec. 3.3 (paraphrased): the predictor q_θ has the same architecture as the projector g_θ."""

DINO_HEAD = DINOHeadSpec()
"""DINO [2], Sec. 3.1 (paraphrased): a 3-layer MLP with hidden dimension 2048, then ℓ2 normalisation
and a weight-normalised fully connected layer with K output dimensions; bottleneck 256 and K = 65536 as in the official code."""

SWAV_PROJECTOR = MLPSpec(hidden=2048, out=128, layers=2)
"""SwAV [3], Appendix (paraphrased): a 2-layer MLP projection head, hidden 2048 with BatchNorm and
ReLU, projecting the features to a 128-dimensional space, then L2-normalised."""

SWAV_PROTOTYPES = PrototypeSpec(n_prototypes=3000, heads=1)
"""SwAV [3] (paraphrased): 3000 prototypes on ImageNet, normalised to unit length at every step."""

DEEPCLUSTER_PROJECTOR = SWAV_PROJECTOR
"""DeepCluster-v2 [3], Appendix (paraphrased): the same architecture and projection head as SwAV."""

DEEPCLUSTER_PROTOTYPES = PrototypeSpec(n_prototypes=3000, heads=3)
"""DeepCluster-v2 [3] (paraphrased): three sets of 3000 prototypes, each set the centroids of its
own k-means on the memory bank, recomputed every epoch."""


_Spec = TypeVar("_Spec", MLPSpec, DINOHeadSpec, PrototypeSpec)


def as_spec(value: Any, cls: type[_Spec], name: str | None = None) -> _Spec:
    """Accept a spec of type ``cls`` or a dict of its fields (as read from a config file).

    Args:
        value: the spec, or a dict of its fields.
        cls: the spec's class.
        name: the argument's name as the caller knows it (e.g. ``"projector"``), named by every error:
            a bad field of a dict is reported as ``"projector: hidden must be an int >= 1, got 0"``.
            Without it, errors say ``spec`` and a bad field is reported by the field's name alone.

    Raises:
        TypeError / ValueError: ``value`` is neither, has unknown or missing fields, or a bad field.
    """
    if isinstance(value, cls):
        return value
    arg = "spec" if name is None else name
    if isinstance(value, dict):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(value) - set(fields)
        if unknown:
            raise ValueError(f"{arg} has unknown fields {sorted(unknown)} for {cls.__name__}")
        missing = [n for n, f in fields.items() if n not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{arg} is missing the fields {missing} of {cls.__name__}")
        try:
            return cls(**value)
        except (TypeError, ValueError) as e:
            if name is None:
                raise
            raise type(e)(f"{name}: {e}") from None
    raise TypeError(f"{arg} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def build_mlp(in_dim: int, spec: MLPSpec, name: str | None = None) -> nn.Sequential:
    """The MLP described by ``spec``, taking ``in_dim`` features.

    ``name`` is the spec's argument name as the caller knows it (e.g. ``"projector"``): errors in a dict
    ``spec`` are prefixed with it (see :func:`as_spec`).

    Example:
        >>> head = build_mlp(512, SIMCLR_PROJECTOR)  # 512 -> 2048 -> 128
    """
    checks.positive_int(in_dim, "in_dim")
    spec = as_spec(spec, MLPSpec, name)
    act = _ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(spec.layers - 1):
        layers.append(nn.Linear(dim, spec.hidden, bias=not spec.bn))
        if spec.bn:
            layers.append(nn.BatchNorm1d(spec.hidden))
        layers.append(act())
        dim = spec.hidden
    layers.append(nn.Linear(dim, spec.out, bias=not spec.last_bn))
    if spec.last_bn:
        layers.append(nn.BatchNorm1d(spec.out))
    return nn.Sequential(*layers)


def _no_grad(p: torch.Tensor) -> torch.Tensor:
    """``p``'s value with a zero gradient, still in the graph (DDP expects every parameter to get one)."""
    return p.detach() + 0.0 * p if p.requires_grad else p


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation ``w_k = g_k v_k / |v_k|`` (Salimans & Kingma 2016).

    With ``learn_gain=False`` the gain is fixed to 1 (DINO's ``norm_last_layer``), so each output
    is the dot product of the input with a unit vector.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_gain: bool = False) -> None:
        super().__init__()
        checks.positive_int(in_dim, "in_dim")
        checks.positive_int(out_dim, "out_dim")
        checks.boolean(learn_gain, "learn_gain")
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(out_dim), requires_grad=learn_gain)

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Outputs (N, out_dim) of ``x`` (N, in_dim); NaN or inf entries propagate (values are not read)."""
        checks.batch(x, "x", self.weight.shape[1])
        v, g = (_no_grad(self.weight), _no_grad(self.gain)) if frozen else (self.weight, self.gain)
        return F.linear(x, F.normalize(v, dim=1) * g[:, None])


class DINOHead(nn.Module):
    """DINO's projection head; returns the normalised bottleneck and the K logits.

    ``name`` is the spec's argument name as the caller knows it (e.g. ``"head"``), prefixed to the errors
    of a dict ``spec`` (see :func:`as_spec`).
    """

    def __init__(self, in_dim: int, spec: DINOHeadSpec = DINO_HEAD, name: str | None = None) -> None:
        super().__init__()
        checks.positive_int(in_dim, "in_dim")
        spec = as_spec(spec, DINOHeadSpec, name)
        self.in_dim = in_dim
        self.spec = spec
        mlp = MLPSpec(spec.hidden, spec.bottleneck, spec.layers, bn=spec.bn, activation=spec.activation)
        self.mlp = build_mlp(in_dim, mlp)
        for m in self.mlp.modules():  # DINO's initialisation of the MLP
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(spec.bottleneck, spec.out, learn_gain=not spec.norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(z, logits)`` of ``x`` (N, in_dim): z (N, bottleneck) L2-normalised, logits (N, K).

        ``x`` is checked by type and shape only: NaN or inf entries propagate to the outputs.
        """
        checks.batch(x, "x", self.in_dim)
        z = F.normalize(self.mlp(x), dim=-1)
        return z, self.last_layer(z, frozen=freeze_last_layer)


class Prototypes(nn.Module):
    """``spec.heads`` sets of prototypes; scores are dot products with the (unit) prototypes.

    SwAV and DeepCluster-v2 normalise the prototypes in place before each step
    (:meth:`normalize_`) and train them as plain linear weights, so with normalised inputs the
    scores are cosine similarities in [-1, 1].
    """

    def __init__(self, dim: int, spec: PrototypeSpec = SWAV_PROTOTYPES, name: str | None = None) -> None:
        super().__init__()
        checks.positive_int(dim, "dim")
        spec = as_spec(spec, PrototypeSpec, name)
        self.dim = dim
        self.spec = spec
        self.heads = nn.ModuleList(nn.Linear(dim, spec.n_prototypes, bias=False) for _ in range(spec.heads))
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project each prototype back onto the unit sphere."""
        for head in self.heads:
            head.weight.copy_(F.normalize(head.weight, dim=1))

    def forward(self, z: torch.Tensor, frozen: bool = False) -> list[torch.Tensor]:
        """Scores (N, K) of ``z`` (N, dim) for each set; ``frozen`` stops the prototypes' gradient.

        ``z`` is checked by type and shape only: NaN or inf entries propagate to the scores.
        """
        checks.batch(z, "z", self.dim)
        return [F.linear(z, _no_grad(head.weight) if frozen else head.weight) for head in self.heads]
