"""The one typed config tree: dataclasses loaded from YAML, overridden with ``key.sub=value``, validated once.

Every problem (unknown key, wrong type, invalid value) is collected and raised together in one
`ConfigError`, each line naming the dotted key and what was expected. Defaults live here and only here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stage1_ds.data.timeframes import TIMEFRAMES, Timeframe
from stage1_ds.errors import ConfigError

_ALL_TIMEFRAMES = [tf.value for tf in TIMEFRAMES]


@dataclass
class DataConfig:
    """How windows are cut from a prepared data folder.

    Attributes:
        timeframes: timeframes the model sees, any subset of m1 m5 m15 m30 h1 h4 that includes m1.
        window_bars: bars per window for every timeframe not listed in ``window_bars_per_timeframe``.
        window_bars_per_timeframe: per-timeframe window lengths, e.g. ``{h4: 64}``.
        keep_probability: per-timeframe probability that a sample keeps the timeframe (default 1.0). A
            dropped timeframe is fully masked, never NaN; a sample that would drop every timeframe keeps m1.
        num_workers: DataLoader worker processes per rank.
    """

    timeframes: list[str] = field(default_factory=lambda: list(_ALL_TIMEFRAMES))
    window_bars: int = 128
    window_bars_per_timeframe: dict[str, int] = field(default_factory=dict)
    keep_probability: dict[str, float] = field(default_factory=dict)
    num_workers: int = 0

    def bars(self, tf: Timeframe | str) -> int:
        return self.window_bars_per_timeframe.get(str(tf), self.window_bars)

    def keep(self, tf: Timeframe | str) -> float:
        return self.keep_probability.get(str(tf), 1.0)

    def validate(self, prefix: str) -> list[str]:
        problems = []
        unknown = [t for t in self.timeframes if t not in _ALL_TIMEFRAMES]
        if unknown:
            problems.append(f"{prefix}.timeframes: unknown {unknown}; choose from {_ALL_TIMEFRAMES}")
        if "m1" not in self.timeframes:
            problems.append(f"{prefix}.timeframes: must include m1, the base timeframe")
        if len(set(self.timeframes)) != len(self.timeframes):
            problems.append(f"{prefix}.timeframes: lists a timeframe twice")
        if self.window_bars < 1:
            problems.append(f"{prefix}.window_bars: {self.window_bars}, expected at least 1")
        for key, value in self.window_bars_per_timeframe.items():
            if key not in self.timeframes:
                problems.append(
                    f"{prefix}.window_bars_per_timeframe.{key}: not one of timeframes {self.timeframes}"
                )
            elif value < 1:
                problems.append(f"{prefix}.window_bars_per_timeframe.{key}: {value}, expected at least 1")
        for key, probability in self.keep_probability.items():
            if key not in self.timeframes:
                problems.append(f"{prefix}.keep_probability.{key}: not one of timeframes {self.timeframes}")
            elif not 0.0 <= probability <= 1.0:
                problems.append(
                    f"{prefix}.keep_probability.{key}: {probability}, expected a number in [0, 1]"
                )
        if self.num_workers < 0:
            problems.append(f"{prefix}.num_workers: {self.num_workers}, expected at least 0")
        return problems


class Phase(StrEnum):
    """What trains: ``frozen`` (T5 frozen), ``lora`` (LoRA adapters on a frozen T5), ``full`` (every weight,
    LoRA merged in first). Stems, embeddings and heads train in every phase."""

    FROZEN = "frozen"
    LORA = "lora"
    FULL = "full"


class EncoderPreset(StrEnum):
    TINY = "tiny"
    MINI = "mini"
    T5_SMALL = "t5-small"
    T5_BASE = "t5-base"
    T5_LARGE = "t5-large"


class Fusion(StrEnum):
    JOINT = "joint"
    PER_TIMEFRAME = "per_timeframe"


class LossKind(StrEnum):
    MSE = "mse"
    HUBER = "huber"


@dataclass
class EncoderConfig:
    """The shared T5 encoder.

    Attributes:
        preset: layout built from `T5Config` (tiny and mini for tests and CPU demos; the published
            t5-small, t5-base and t5-large layouts).
        pretrained_path: a local folder written by ``save_pretrained`` whose weights to load (its own
            config decides the layout; ``preset`` is then ignored). None: random init from the preset.
        dropout: dropout rate inside the encoder.
    """

    preset: EncoderPreset = EncoderPreset.MINI
    pretrained_path: str | None = None
    dropout: float = 0.1

    def validate(self, prefix: str) -> list[str]:
        if not 0.0 <= self.dropout < 1.0:
            return [f"{prefix}.dropout: {self.dropout}, expected a number in [0, 1)"]
        return []


@dataclass
class MaskingConfig:
    """Span masking at patch granularity.

    Attributes:
        ratio: share of each timeframe's patches that are masked (rounded, at least one).
        mean_span_patches: mean length of a masked span, in patches.
        sync_across_timeframes: a masked patch of a coarser timeframe also masks every finer patch that
            overlaps its time span, so a masked stretch cannot be read off a finer timeframe.
    """

    ratio: float = 0.3
    mean_span_patches: float = 2.0
    sync_across_timeframes: bool = False

    def validate(self, prefix: str) -> list[str]:
        problems = []
        if not 0.0 < self.ratio < 1.0:
            problems.append(f"{prefix}.ratio: {self.ratio}, expected a number in (0, 1)")
        if self.mean_span_patches < 1.0:
            problems.append(f"{prefix}.mean_span_patches: {self.mean_span_patches}, expected at least 1")
        return problems


@dataclass
class LoraConfig:
    """LoRA adapters on the shared encoder (peft).

    Attributes:
        rank: adapter rank r.
        alpha: scaling numerator; the update is ``B @ A * alpha / rank``.
        dropout: dropout on the adapter input.
        target_modules: names of the encoder's linear layers to adapt (T5: q k v o wi wo).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q", "v"])

    def validate(self, prefix: str) -> list[str]:
        problems = []
        if self.rank < 1:
            problems.append(f"{prefix}.rank: {self.rank}, expected at least 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"{prefix}.dropout: {self.dropout}, expected a number in [0, 1)")
        if not self.target_modules:
            problems.append(f"{prefix}.target_modules: empty, expected names such as [q, v]")
        return problems


@dataclass
class LossConfig:
    """Masked reconstruction plus cross-timeframe consistency.

    Attributes:
        kind: mse or huber, on masked bars only.
        huber_delta: the Huber loss's delta, in feature units.
        timeframe_weights: per-timeframe weight of the reconstruction term (default 1.0 each).
        cross_timeframe_weight: weight of the consistency term against the reconstruction term.
    """

    kind: LossKind = LossKind.MSE
    huber_delta: float = 1.0
    timeframe_weights: dict[str, float] = field(default_factory=dict)
    cross_timeframe_weight: float = 0.1

    def validate(self, prefix: str) -> list[str]:
        problems = []
        if self.huber_delta <= 0:
            problems.append(f"{prefix}.huber_delta: {self.huber_delta}, expected a positive number")
        for key, weight in self.timeframe_weights.items():
            if key not in _ALL_TIMEFRAMES or weight < 0:
                problems.append(
                    f"{prefix}.timeframe_weights.{key}: expected a timeframe of {_ALL_TIMEFRAMES} "
                    "with a weight >= 0"
                )
        if self.cross_timeframe_weight < 0:
            problems.append(f"{prefix}.cross_timeframe_weight: {self.cross_timeframe_weight}, expected >= 0")
        return problems


@dataclass
class ModelConfig:
    """The Stage-1 model: per-timeframe stems and heads around one shared T5 encoder.

    Attributes:
        encoder: the shared T5 encoder.
        patch_len: bars per patch token.
        fusion: joint (all timeframes' tokens in one sequence) or per_timeframe (timeframes folded into the
            batch); one encoder call either way.
        masking: span masking of input patches.
        lora: LoRA adapters, used in the lora phase.
        loss: the training objective.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    patch_len: int = 8
    fusion: Fusion = Fusion.JOINT
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def validate(self, prefix: str) -> list[str]:
        if self.patch_len < 1:
            return [f"{prefix}.patch_len: {self.patch_len}, expected at least 1"]
        return []


@dataclass
class Config:
    """The root of the config tree."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0

    def validate(self, prefix: str = "") -> list[str]:
        return []


# ---------------------------------------------------------------------------------------------------------
# Loading, overrides and validation (generic over the dataclasses above).

T = TypeVar("T")


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (or the defaults), apply ``key.sub=value`` overrides, validate.

    Raises:
        ConfigError: listing every unknown key, type error and invalid value, with valid choices.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        loaded = yaml.safe_load(path.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
        raw = loaded or {}
    for override in overrides or []:
        apply_override(raw, override)
    return config_from_dict(raw, source=str(path) if path else "defaults")


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``1e-4``, ``[m1, h1]``)."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key.sub=value")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    problems: list[str] = []
    config = _build(Config, raw, "", problems)
    # A value of the wrong type (already reported) can break a check that compares it.
    with contextlib.suppress(TypeError):
        problems.extend(_validate_tree(config, ""))

    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))
    return config


def config_to_dict(config: Any) -> Any:
    """The config as plain YAML-able data (enums as their values)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Enum):
        return config.value
    if isinstance(config, list):
        return [config_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config


def _validate_tree(node: Any, prefix: str) -> list[str]:
    problems: list[str] = []
    if dataclasses.is_dataclass(node):
        validate = getattr(node, "validate", None)
        if validate is not None:
            problems.extend(validate(prefix.rstrip(".") or "config"))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, list):
                for i, item in enumerate(value):
                    problems.extend(_validate_tree(item, f"{prefix}{f.name}[{i}]."))
            else:
                problems.extend(_validate_tree(value, f"{prefix}{f.name}."))
    return problems


def _build(cls: type[T], raw: Any, prefix: str, problems: list[str]) -> T:
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key; valid keys here: {sorted(names)}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _convert(hints[name], raw[name], f"{prefix}{name}", problems)
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, problems)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.", problems)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return []
        return [_convert(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        return {str(k): _convert(args[1], v, f"{key}.{k}", problems) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        choices = [m.value for m in hint]
        if value not in choices:
            problems.append(f"{key}: {value!r} is not one of {choices}")
            return next(iter(hint))
        return hint(value)
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value
