"""A pre-training run's configuration: dataclasses whose defaults are the code's defaults.

A run is described by :class:`RunConfig` (and its parts :class:`DataConfig`, :class:`ModelConfig`,
:class:`OptimConfig`, :class:`ProbeConfig`, :class:`EvalConfig`). The defaults live in the field
declarations below and nowhere else; a YAML file (read with ``yaml.safe_load``) and dotted
command-line overrides only change what they name::

    cfg = load_config("my_run.yaml", ["optim.lr=0.1", "hyper.base_momentum=0.99"])

The method's own hyper-parameters are not repeated here: ``hyper`` is passed as keyword arguments
to :func:`mvssl_core.methods.build_method`, so their defaults stay in the method's signature (a head
given as a dict of its fields, e.g. ``hyper.projector={hidden: 512, out: 128}``, is accepted there).
Likewise ``model.kwargs`` go to :func:`mvssl_core.backbones.build_backbone` and ``data.view_kwargs``
to the views recipe.

YAML is read as YAML 1.2 reads it, not as PyYAML's YAML 1.1: only ``true`` / ``false`` are booleans
(``yes``, ``no``, ``on``, ``off`` stay strings, so ``eval.knn=no`` is refused, not read as false, and a
split named ``off`` stays a name) and ``1e-3`` is a float (YAML 1.1 needs ``1.0e-3``). A quoted value
is a string: ``optim.lr="0.1"`` is refused, no string is turned into a number or a boolean, and no
boolean into a number. A document whose aliases expand to more than :data:`MAX_YAML_NODES` nodes (a
"billion laughs" file) or that refers to itself is refused before anything is built from it.

Every check raises :class:`ConfigError` (a ``ValueError``) naming the key, the value and what was
expected. Every float key must be finite (NaN passes every comparison, so it is refused by name,
whatever the key); so must every float inside ``hyper``, ``model.kwargs``, ``data.view_kwargs`` and
``data.kwargs``, and every integer must fit in 64 bits. The resolved configuration (:func:`to_dict`) is
saved with every run (``config.yaml``, the checkpoint and the results file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mvssl_core.atomic import atomic_write
from mvssl_core.errors import ConfigError

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ProbeConfig",
    "EvalConfig",
    "RunConfig",
    "from_dict",
    "to_dict",
    "parse_override",
    "apply_overrides",
    "load_config",
    "save_config",
    "validate",
    "read_yaml",
    "dump_yaml",
    "MAX_YAML_NODES",
    "MAX_SEED",
    "MAX_SIZE",
    "MAX_LR",
]


BATCHED_VIEWS = ("imagefolder", "digits", "shapes")
"""Data sets the batched (``data.gpu_pipeline``) views accept: JPEG files, or uint8 tensors in memory."""


MAX_YAML_NODES = 100_000
"""Most nodes a YAML document (a config file or an override's value) may have once its aliases are expanded."""

MAX_SEED = 2**32 - 1
"""Largest ``seed``: numpy's seeds are below 2**32 (and torch's below 2**64)."""

MAX_LR = 1e6
"""Largest ``optim.lr`` and ``probe.lr``: far above any working rate, far below where an optimizer's step
overflows float32 (AdamW failed on 1e38 with a RuntimeError)."""

MAX_SIZE = 4096
"""Largest ``data.size`` in px (one 4096 x 4096 view is already 200 MB in float32)."""


@dataclass
class DataConfig:
    """The pre-training data and its views.

    Attributes:
        name: a data set of :data:`mvssl_core.data.DATASETS` ("digits", "shapes", "cifar10", ...).
        root: folder of the on-disk data sets (ImageFolder, CIFAR, STL-10).
        size: side of the global views fed to the network, in px (digits and shapes are rendered at it).
        split: the pre-training split (None: "train"; STL-10: "train+unlabeled").
        eval_train_split: split the offline probe is fitted on (None: "train").
        eval_split: split the offline probe is scored on (None: "val" for imagefolder, else "test").
        download: let torchvision download CIFAR / STL-10.
        n: number of generated images ("shapes" only; None: the data set's default).
        views: views recipe of :data:`mvssl_core.views.VIEWS` (None: the method's own recipe).
        view_kwargs: keyword arguments of the recipe (e.g. ``n_local: 2``).
        kwargs: further keyword arguments of :func:`mvssl_core.data.build_dataset`.
        gpu_pipeline: decode the JPEGs and make the views on the training device, a batch at a time
            (:mod:`mvssl_core.gpu_views`; ImageFolder, digits, shapes): true, false, or "auto" (on for an
            ImageFolder on CUDA).
    """

    name: str = "digits"
    root: str = "data"
    size: int = 32
    split: str | None = None
    eval_train_split: str | None = None
    eval_split: str | None = None
    download: bool = False
    n: int | None = None
    views: str | None = None
    view_kwargs: dict = field(default_factory=dict)
    kwargs: dict = field(default_factory=dict)
    gpu_pipeline: bool | str = False


@dataclass
class ModelConfig:
    """The encoder.

    Attributes:
        backbone: "resnet18", "resnet50" or "convnet" (:func:`mvssl_core.backbones.build_backbone`).
        kwargs: its keyword arguments (``small_images``, ``widths``, ``norm``, ...).
        sync_bn: in a distributed GPU run, BatchNorm statistics over the global batch (every BatchNorm of
            the method, EMA teachers included, becomes ``nn.SyncBatchNorm``; :func:`mvssl_core.dist.sync_batchnorm`).
            No effect with one process; on CPU (gloo) torch's SyncBatchNorm refuses its input, so the
            run keeps per-process BatchNorm and says so in a warning.
    """

    backbone: str = "resnet18"
    kwargs: dict = field(default_factory=dict)
    sync_bn: bool = False


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine to ``final_lr``).

    Attributes:
        name: "lars" (:class:`mvssl_core.optim.LARS`, biases and norms excluded), "sgd" or "adamw".
        lr: base learning rate; the peak is ``lr * batch_size / 256`` when ``scale_lr``.
        scale_lr: apply the linear scaling rule.
        final_lr: learning rate at the end, as a fraction of the peak.
        weight_decay: on weights only (biases and normalisation parameters get none).
        momentum: momentum of LARS and SGD (AdamW's beta1).
        warmup_epochs: length of the linear warm-up, in epochs (clipped to the run's length).
    """

    name: str = "lars"
    lr: float = 0.3
    scale_lr: bool = True
    final_lr: float = 0.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 10.0


@dataclass
class ProbeConfig:
    """The online linear probe: a linear classifier on the detached features of the first view.

    Attributes:
        enabled: train it (labels of -1, e.g. STL-10's unlabeled split, are ignored).
        lr: its learning rate (AdamW, no weight decay, constant).
    """

    enabled: bool = True
    lr: float = 1e-3


@dataclass
class EvalConfig:
    """The evaluation at the end of the run, on frozen features of un-augmented images.

    Attributes:
        knn: weighted kNN classifier (:func:`mvssl_core.evaluate.knn_classify`).
        linear: offline linear probe (:func:`mvssl_core.evaluate.linear_probe`).
        k: neighbours of the kNN classifier.
        temperature: temperature of the kNN weights.
        max_train: use at most this many training images (None: all).
        batch_size: images per forward pass.
    """

    knn: bool = True
    linear: bool = True
    k: int = 20
    temperature: float = 0.07
    max_train: int | None = None
    batch_size: int = 256


@dataclass
class RunConfig:
    """One pre-training run.

    Attributes:
        method: a name of :data:`mvssl_core.methods.METHODS` ("simclr", "byol_er", ...).
        hyper: keyword arguments of the method (its defaults are in its signature).
        data, model, optim, probe, eval: the parts above.
        batch_size: the global batch (over processes and accumulation steps).
        accumulate: micro-batches per optimizer step (gradient accumulation); the coupled
            estimators see one micro-batch (over all processes) at a time.
        epochs: length of the run, if ``steps`` is None.
        steps: length of the run in optimizer steps (overrides ``epochs``).
        seed: seeds the initialisation, the data order and every view.
        num_workers: DataLoader worker processes per process (0: load in the main process).
        device: "auto" (the GPU of this process's LOCAL_RANK when there is one), "cpu" or "cuda".
        precision: "auto" (bf16 autocast on GPU, float32 on CPU), "bf16" or "fp32".
        channels_last: channels-last memory format (None: on GPU only).
        log_every: write a metrics line every this many steps (and at the last step).
        checkpoint_every: write the checkpoint every this many steps (0: only at the end).
        out: the run's folder (None: ``runs/<method>-<data>-s<seed>``).
        results_file: also write the results record here (e.g. ``results/imagenet/<run>.json``, where
            the book reads it), besides ``<out>/results.json``.
        progress: show a progress bar (rank 0).
    """

    method: str = "simclr"
    hyper: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    batch_size: int = 256
    accumulate: int = 1
    epochs: int = 100
    steps: int | None = None
    seed: int = 0
    num_workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    log_every: int = 10
    checkpoint_every: int = 1000
    out: str | None = None
    results_file: str | None = None
    progress: bool = True

    def run_dir(self) -> Path:
        """The run's folder."""
        return Path(self.out if self.out is not None else f"runs/{self.method}-{self.data.name}-s{self.seed}")


# ------------------------------------------------------------------------------------------------
# dict <-> dataclass, with type checks


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits the annotation ``tp``; returns (ok, value converted).

    The only conversion is int -> float for a float key (``optim.lr: 1`` is 1.0; an int too large for a
    float becomes inf, which the finiteness check then refuses). Strings are never read as numbers or
    booleans, and booleans are not numbers.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return True, float(value)
        except OverflowError:  # an int beyond 1.8e308
            return True, math.inf if value > 0 else -math.inf
    if tp is str:
        return isinstance(value, str), value
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    raise TypeError(f"unsupported annotation {tp!r}")  # pragma: no cover - a bug in this file


def _type_hint(value: Any, tp: Any) -> str:
    """A hint for a value of the wrong type that a YAML habit may explain."""
    accepts = {tp} if typing.get_origin(tp) not in (Union, types.UnionType) else set(typing.get_args(tp))
    if isinstance(value, str) and (bool in accepts) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        return "; write true or false"
    if isinstance(value, str) and accepts & {int, float}:
        try:
            float(value)
        except ValueError:
            return ""
        return "; write the number without quotes"
    return ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else "a mapping" if tp is dict else tp.__name__


def from_dict(cls: type, values: dict | None, where: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) dict, checking every key and type.

    Missing keys keep their defaults. Raises :class:`ConfigError` naming the dotted key.
    """
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"config section '{where.rstrip('.') or '<root>'}' must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        key = f"{where}{unknown[0]}"
        raise ConfigError(f"unknown config key '{key}'; the keys of '{where.rstrip('.') or '<root>'}' are {names}")
    kwargs = {}
    for name, value in values.items():
        tp, key = hints[name], f"{where}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{key}.")
            continue
        ok, converted = _type_ok(value, tp)
        if not ok:
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {type(value).__name__} "
                              f"({value!r:.80}){_type_hint(value, tp)}")
        _check_numbers(converted, key)
        kwargs[name] = converted
    return cls(**kwargs)


_INT64 = (-(2**63), 2**63 - 1)


def _check_numbers(value: Any, key: str) -> None:
    """Refuse a non-finite float or an integer beyond 64 bits in ``value`` (nested dicts and lists included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise ConfigError(f"config key '{key}' must fit in 64 bits (|value| < 2**63), got an integer of {value.bit_length()} bits")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(v, f"{key}[{i}]")


def _check_all_numbers(cfg: Any, where: str = "") -> None:
    """:func:`_check_numbers` on every field of the dataclass ``cfg``, walking the nested dataclasses."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_all_numbers(value, f"{where}{f.name}.")
        else:
            _check_numbers(value, f"{where}{f.name}")


def to_dict(cfg: Any) -> dict:
    """The configuration as plain nested dicts (YAML- and JSON-ready)."""
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------------------------
# overrides


_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
# YAML 1.2's core-schema floats: 1e-3, 1.5, .5, 1.0e+6, .inf, -.inf, .nan (YAML 1.1 needs a dot and a signed exponent)
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's booleans (true / false only) and floats, and a bound on aliases."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _expanded_size(node, {}, set())
        _no_duplicate_keys(node, set())
        return node


_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_12, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that also quotes the strings YAML 1.2 would read as floats (``'1e-3'``): its output reads
    back the same with :class:`_Loader` and with ``yaml.safe_load``."""


_Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_12, list("-+0123456789."))


class _TooLarge(Exception):
    """A YAML document refused before it is built: too large once expanded, recursive, or a key given twice."""


def _no_duplicate_keys(node: yaml.Node, seen: set[int]) -> None:
    """Raise :class:`_TooLarge` for a key written twice in one mapping (PyYAML keeps the last one silently:
    ``optim:`` twice in a config file would drop the first block). Merge keys (``<<: *base``) may be overridden."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    raise _TooLarge(f"the key {key.value!r} is given twice in one mapping (lines {keys[key.value]} and "
                                    f"{key.start_mark.line + 1}); YAML would keep the last silently: write it once")
                keys[key.value] = key.start_mark.line + 1
            _no_duplicate_keys(value, seen)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _no_duplicate_keys(child, seen)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes of ``node`` with every alias expanded (each shared node counted once per use); raises
    :class:`_TooLarge` beyond :data:`MAX_YAML_NODES` or on a node that contains itself."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _TooLarge("an alias refers to a node that contains it (a recursive structure)")
    open_.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    open_.discard(key)
    if n > MAX_YAML_NODES:
        raise _TooLarge(f"its aliases expand to more than {MAX_YAML_NODES} nodes (an alias bomb?)")
    sizes[key] = n
    return n


def _load_yaml(text: str, what: str) -> Any:
    """``text`` parsed with :class:`_Loader`; a ConfigError naming ``what`` if it is not valid or too large."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except _TooLarge as e:
        raise ConfigError(f"{what} is refused: {e}") from None
    except RecursionError:
        raise ConfigError(f"{what} is refused: it is nested too deeply") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {e}") from None


def dump_yaml(values: Any) -> str:
    """``values`` as YAML (keys in their order) that :func:`read_yaml` and ``yaml.safe_load`` read back the same."""
    return yaml.dump(values, Dumper=_Dumper, sort_keys=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> ``(["optim", "lr"], 0.1)``; the value is read as YAML (``[32, 64]``, ``true``, ``null``)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"an override must look like key.sub=value (e.g. optim.lr=0.1), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {text!r}: the key must be dotted names like optim.lr")
    value = _load_yaml(raw, f"override {text[:200]!r}: the value") if raw.strip() else ""
    return parts, value


def apply_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key.sub=value`` overrides to a nested dict (a copy is returned)."""
    import copy

    out = copy.deepcopy(values)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(parts[: i + 1])}' is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------------------------------------
# files


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from ``path`` (safe, YAML 1.2 booleans and floats, aliases bounded), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    values = _load_yaml(text, f"config file {path}")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(values).__name__}")
    return values


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None) -> RunConfig:
    """The validated :class:`RunConfig` from the defaults, ``base``, then a YAML file, then ``overrides``."""
    values = dict(base or {})
    if path is not None:
        values = _merge(values, read_yaml(path))
    values = apply_overrides(values, list(overrides))
    cfg = from_dict(RunConfig, values)
    validate(cfg)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as YAML, atomically (:func:`mvssl_core.atomic.atomic_write`)."""
    text = dump_yaml(to_dict(cfg))
    return atomic_write(path, lambda f: f.write(text))


# ------------------------------------------------------------------------------------------------
# semantic checks


def _choice(value: Any, key: str, options: tuple) -> None:
    if value not in options:
        raise ConfigError(f"config key '{key}' must be one of {list(options)}, got {value!r}")


def _at_least(value: Any, key: str, minimum: float, strict: bool = False) -> None:
    if value is None:
        return
    bad = value <= minimum if strict else value < minimum
    if bad:
        raise ConfigError(f"config key '{key}' must be {'>' if strict else '>='} {minimum}, got {value!r}")


def _at_most(value: Any, key: str, maximum: float) -> None:
    if value is not None and value > maximum:
        raise ConfigError(f"config key '{key}' must be <= {maximum}, got {value!r}")


def validate(cfg: RunConfig) -> RunConfig:
    """Range and consistency checks that the types alone do not express.

    Every float must be finite and every integer fit in 64 bits, for every field of the dataclasses (found by
    walking them: a new key is covered) and inside their dicts.
    """
    from mvssl_core.backbones import BACKBONES
    from mvssl_core.data import DATASETS
    from mvssl_core.methods import METHODS
    from mvssl_core.views import VIEWS

    _check_all_numbers(cfg)
    _choice(cfg.method, "method", tuple(METHODS))
    if "er" in cfg.hyper:
        raise ConfigError("config key 'hyper.er' is not allowed: choose the ER variant by name (e.g. method: byol_er)")
    if "distributed" in cfg.hyper:
        raise ConfigError("config key 'hyper.distributed' is set by the trainer (true under torchrun), leave it out")
    _choice(cfg.data.name, "data.name", DATASETS)
    if cfg.data.views is not None:
        _choice(cfg.data.views, "data.views", tuple(VIEWS))
    _at_least(cfg.data.size, "data.size", 8)
    _at_most(cfg.data.size, "data.size", MAX_SIZE)
    _at_least(cfg.data.n, "data.n", 1)
    if isinstance(cfg.data.gpu_pipeline, str) and cfg.data.gpu_pipeline != "auto":
        raise ConfigError(f"config key 'data.gpu_pipeline' must be true, false or 'auto', got {cfg.data.gpu_pipeline!r}")
    if cfg.data.gpu_pipeline is True and cfg.data.name not in BATCHED_VIEWS:
        raise ConfigError(f"data.gpu_pipeline needs JPEG files or in-memory uint8 images: data.name one of "
                          f"{list(BATCHED_VIEWS)}, not {cfg.data.name!r}")
    _choice(cfg.model.backbone, "model.backbone", BACKBONES)
    _choice(cfg.optim.name, "optim.name", ("lars", "sgd", "adamw"))
    _at_least(cfg.optim.lr, "optim.lr", 0.0, strict=True)
    _at_most(cfg.optim.lr, "optim.lr", MAX_LR)
    _at_least(cfg.optim.final_lr, "optim.final_lr", 0.0)
    _at_least(cfg.optim.weight_decay, "optim.weight_decay", 0.0)
    if not 0.0 <= cfg.optim.momentum < 1.0:
        raise ConfigError(f"config key 'optim.momentum' must be in [0, 1), got {cfg.optim.momentum}")
    _at_least(cfg.optim.warmup_epochs, "optim.warmup_epochs", 0.0)
    _at_least(cfg.probe.lr, "probe.lr", 0.0, strict=True)
    _at_most(cfg.probe.lr, "probe.lr", MAX_LR)
    _at_least(cfg.eval.k, "eval.k", 1)
    _at_least(cfg.eval.temperature, "eval.temperature", 0.0, strict=True)
    _at_least(cfg.eval.max_train, "eval.max_train", 1)
    _at_least(cfg.eval.batch_size, "eval.batch_size", 1)
    _at_least(cfg.batch_size, "batch_size", 2)
    _at_least(cfg.accumulate, "accumulate", 1)
    if cfg.batch_size % cfg.accumulate:
        raise ConfigError(f"batch_size ({cfg.batch_size}) must be a multiple of accumulate ({cfg.accumulate})")
    if cfg.batch_size // cfg.accumulate < 2:
        raise ConfigError(f"each micro-batch (batch_size / accumulate = {cfg.batch_size // cfg.accumulate}) needs >= 2 samples")
    _at_least(cfg.seed, "seed", 0)
    _at_most(cfg.seed, "seed", MAX_SEED)
    _at_least(cfg.epochs, "epochs", 1)
    _at_least(cfg.steps, "steps", 1)
    _at_least(cfg.num_workers, "num_workers", 0)
    _choice(cfg.device, "device", ("auto", "cpu", "cuda"))
    _choice(cfg.precision, "precision", ("auto", "bf16", "fp32"))
    _at_least(cfg.log_every, "log_every", 1)
    _at_least(cfg.checkpoint_every, "checkpoint_every", 0)
    return cfg
