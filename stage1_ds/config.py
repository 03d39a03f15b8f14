"""The one typed config tree: dataclasses loaded from YAML, overridden with ``key.sub=value``, validated.

Every problem (unknown key, wrong type, invalid value) is collected and raised together in one
`ConfigError`, each line naming the dotted key and what was expected. `Config.validate` runs for every
config, however it was built (from YAML here, or in code by benchmarks and tests: `train` and `evaluate`
call it). Defaults live here and only here, the data preparation's too.

Why one module of about 900 lines: the tree is one contract (every section's keys, defaults, documented
meaning and checks side by side, and the checks that span sections), and a reader looking up a key finds
it, its default and its validation in one place; the loader and the override parser are the rest.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stage1_ds.errors import ConfigError
from stage1_ds.timeframes import TIMEFRAMES, Timeframe

log = logging.getLogger(__name__)

_ALL_TIMEFRAMES = [tf.value for tf in TIMEFRAMES]
#: The repository root: relative paths in configs (``train.ds_config``) are looked up here too.
REPO = Path(__file__).resolve().parent.parent

#: Bars per window of every timeframe; `stage1 prepare` sizes the gap between splits for windows this long.
WINDOW_BARS = 128
#: An instrument without a 1-minute bar in this many minutes before an anchor is closed there: absent from
#: the sample's context windows (`data.context_stale_minutes`) and from the probe's market rule.
CONTEXT_STALE_MINUTES = 60
#: What `stage1 evaluate` scores unless told otherwise: batches of windows per masking mode, windows per
#: batch, and the seed of the windows scored, their masks and the example window drawn.
EVAL_BATCHES, EVAL_BATCH_SIZE, EVAL_SEED = 20, 64, 2024
#: The splits of every prepared folder, in time order.
SPLITS = ("train", "val", "test")
#: Train, val and test shares of each instrument's 1-minute rows, in time order (`stage1 prepare`).
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
#: A target over the minutes after an anchor (the future-size term's, the probe's) is known when at least
#: this share of its minutes have a bar (a closed market leaves it unknown).
TARGET_COVERAGE = 0.75


def resolve_path(path: str | Path) -> Path:
    """A path as given when it is absolute or exists from here, else relative to the repository."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() or candidate.exists() else REPO / candidate


class Section:
    """A section of the config tree; `check` lists its problems, each with its dotted key."""

    def check(self, prefix: str) -> list[str]:
        return []


class InstrumentSampling(StrEnum):
    """How training batches share out among instruments (`stage1_ds.data.windows.InstrumentMix`):
    ``proportional`` to their anchors (every anchor once per epoch), ``uniform`` (each instrument alike), or
    ``temperature`` (weights proportional to anchors ** (1 / data.instrument_temperature))."""

    PROPORTIONAL = "proportional"
    UNIFORM = "uniform"
    TEMPERATURE = "temperature"


@dataclass
class DataConfig(Section):
    """How windows are cut from a prepared data folder.

    Attributes:
        timeframes: timeframes the model sees, any subset of m1 m5 m15 m30 h1 h4 that includes m1.
        window_bars: bars per window for every timeframe not listed in ``window_bars_per_timeframe``.
        window_bars_per_timeframe: per-timeframe window lengths, e.g. ``{h4: 64}``.
        keep_probability: per-timeframe probability that a sample keeps the timeframe (default 1.0). A
            dropped timeframe is fully masked, never NaN; a sample that would drop every timeframe keeps m1.
        channels: what each bar holds: ``[ohlc]`` (open, high, low, close) or ``[ohlc, volume]`` (and its
            traded volume, relative to the visible bars' volume; needs data with real volume).
        num_workers: DataLoader worker processes per rank.
        instrument_sampling: how training batches share out among instruments (`InstrumentSampling`).
        instrument_temperature: with ``temperature`` sampling, T in anchors ** (1 / T): 1 is proportional,
            larger evens the instruments out.
        future_minutes: horizons (minutes after the anchor) of the future-size targets a batch carries
            (`Batch.future_size`, what ``model.loss.future_weight`` trains on); empty: none.
        context: each sample also carries the windows of other instruments of the corpus at its anchor time
            (`Batch.context`, `stage1_ds.data.context`): the market it trades in; the model reads each as
            one summary token (`stage1_ds.model.embed.ContextSummary`; needs ``model.fusion: joint``).
        context_instruments: the instruments that may be context (empty: every instrument of the corpus).
        context_max: at most this many context instruments per sample (the first present ones, in corpus
            order).
        context_stale_minutes: an instrument without a 1-minute bar in this many minutes before the anchor
            (closed, a holiday, before its data) is absent from that sample's context.
    """

    timeframes: list[str] = field(default_factory=lambda: list(_ALL_TIMEFRAMES))
    window_bars: int = WINDOW_BARS
    window_bars_per_timeframe: dict[str, int] = field(default_factory=dict)
    keep_probability: dict[str, float] = field(default_factory=dict)
    channels: list[str] = field(default_factory=lambda: ["ohlc"])
    num_workers: int = 0
    instrument_sampling: InstrumentSampling = InstrumentSampling.PROPORTIONAL
    instrument_temperature: float = 2.0
    future_minutes: list[int] = field(default_factory=list)
    context: bool = False
    context_instruments: list[str] = field(default_factory=list)
    context_max: int = 7
    context_stale_minutes: int = CONTEXT_STALE_MINUTES

    @property
    def volume(self) -> bool:
        """Whether bars carry their traded volume as a fifth feature."""
        return "volume" in self.channels

    def bars(self, tf: Timeframe | str) -> int:
        return self.window_bars_per_timeframe.get(str(tf), self.window_bars)

    def keep(self, tf: Timeframe | str) -> float:
        return self.keep_probability.get(str(tf), 1.0)

    def check(self, prefix: str) -> list[str]:
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
        if any(not isinstance(m, int) or m < 1 for m in self.future_minutes):
            problems.append(f"{prefix}.future_minutes: {self.future_minutes}, expected whole minutes >= 1")
        if self.channels not in (["ohlc"], ["ohlc", "volume"]):
            problems.append(f"{prefix}.channels: {self.channels}, expected [ohlc] or [ohlc, volume]")
        if not self.instrument_temperature > 0:
            problems.append(
                f"{prefix}.instrument_temperature: {self.instrument_temperature}, expected a number above 0"
            )
        if self.context_max < 1:
            problems.append(f"{prefix}.context_max: {self.context_max}, expected at least 1")
        if self.context_stale_minutes < 1:
            problems.append(
                f"{prefix}.context_stale_minutes: {self.context_stale_minutes}, expected whole minutes >= 1"
            )
        if len(set(self.context_instruments)) != len(self.context_instruments):
            problems.append(f"{prefix}.context_instruments: {self.context_instruments} names one twice")
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


class PositionBias(StrEnum):
    """What T5's attention bias between two tokens measures."""

    INDEX = "index"  # T5's own: the difference of their indices in the sequence
    TIME = "time"  # the difference of their patches' end times, in minutes (`stage1_ds.model.time_aware`)


#: Calendar inputs a patch can be given, of its end time on the data clock (`stage1_ds.model.time_aware`).
CALENDAR_FEATURES = ("hour_of_week", "minute_of_hour")


class LossKind(StrEnum):
    MSE = "mse"
    HUBER = "huber"


class MaskingMode(StrEnum):
    """How a sample's masks are laid out (see `MaskingConfig`)."""

    SPANS = "spans"
    TIME = "time"
    HORIZON = "horizon"


@dataclass
class EncoderConfig(Section):
    """The shared T5 encoder.

    Attributes:
        preset: layout built from a T5 config (tiny and mini for tests and CPU demos; the published
            t5-small, t5-base and t5-large layouts).
        pretrained: weights to start from: a local folder written by ``save_pretrained`` (when it exists), a
            Hugging Face model id such as ``google-t5/t5-large`` (loaded through transformers' own cache:
            ``HF_HOME``, and ``HF_HUB_OFFLINE=1`` to never download), or a ``.safetensors`` file. A folder's or
            model's own config decides the layout (``preset`` is then ignored); a file takes the layout of a
            T5 ``config.json`` beside it, else the preset. None: random init from the preset.
        pretrained_prefix: in a ``.safetensors`` file, the prefix under which the T5 encoder stack's weights
            sit (``block.N...``, ``final_layer_norm.weight``), e.g. ``encoder.`` in a full T5 checkpoint or
            ``model.encoder.`` in a time-series model built on a T5 encoder.
        dropout: dropout rate inside the encoder.
    """

    preset: EncoderPreset = EncoderPreset.MINI
    pretrained: str | None = None
    pretrained_prefix: str | None = None
    dropout: float = 0.1

    def check(self, prefix: str) -> list[str]:
        problems = []
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"{prefix}.dropout: {self.dropout}, expected a number in [0, 1)")
        if self.pretrained_prefix is not None and not (self.pretrained or "").endswith(".safetensors"):
            problems.append(
                f"{prefix}.pretrained_prefix: only for a .safetensors file in {prefix}.pretrained, which is "
                f"{self.pretrained!r}"
            )
        return problems


@dataclass
class MaskingConfig(Section):
    """Which bars are hidden from the encoder and reconstructed. Each sample gets one mode, drawn by
    ``modes`` weights from (seed, sample id):

    - ``spans``: each timeframe on its own, exactly ``round(ratio x patches)`` patches in spans of about
      ``mean_span_patches`` (masked bars can often be read off another timeframe's visible bars; kept for
      comparison).
    - ``time``: intervals of real time shared by every timeframe; a bar of any timeframe is masked when its
      span overlaps one, so no masked bar can be recomputed from other timeframes. Each timeframe draws
      spans of its own patches (at ``ratio``) in the part of its window older than the next finer window,
      so every timeframe gets a masked share near ``ratio``, and none is ever masked whole.
    - ``horizon``: every bar of every timeframe that overlaps the last ``horizon_minutes`` before the anchor:
      reconstructing them is forecasting from what came before.

    Attributes:
        ratio: target share of masked patches per timeframe (``spans``: exact; ``time``: near).
        mean_span_patches: mean length of a masked span, in patches.
        modes: weight of each mode (``spans``, ``time``, ``horizon``); weights are normalised.
        horizon_minutes: the masked stretch before the anchor in ``horizon`` mode.
    """

    ratio: float = 0.3
    mean_span_patches: float = 2.0
    # Measured on EURUSD validation windows (docs/model.md, "Masking"): of four mixtures, time 0.7 + horizon 0.3
    # reconstructed time-masked bars best; spans masks teach copying across timeframes.
    modes: dict[str, float] = field(default_factory=lambda: {"time": 0.7, "horizon": 0.3})
    horizon_minutes: int = 60

    def weights(self) -> dict[MaskingMode, float]:
        """The mode weights, normalised, in `MaskingMode` order (modes left out weigh 0)."""
        total = sum(self.modes.values())
        return {mode: self.modes.get(mode.value, 0.0) / total for mode in MaskingMode}

    def check(self, prefix: str) -> list[str]:
        problems = []
        if not 0.0 < self.ratio < 1.0:
            problems.append(f"{prefix}.ratio: {self.ratio}, expected a number in (0, 1)")
        if self.mean_span_patches < 1.0:
            problems.append(f"{prefix}.mean_span_patches: {self.mean_span_patches}, expected at least 1")
        choices = [m.value for m in MaskingMode]
        for name, weight in self.modes.items():
            if name not in choices:
                problems.append(f"{prefix}.modes.{name}: unknown mode; choose from {choices}")
            elif weight < 0:
                problems.append(f"{prefix}.modes.{name}: {weight}, expected a weight >= 0")
        if sum(self.modes.values()) <= 0:
            problems.append(f"{prefix}.modes: {self.modes}, expected a positive weight for one of {choices}")
        if self.horizon_minutes < 1:
            problems.append(f"{prefix}.horizon_minutes: {self.horizon_minutes}, expected at least 1")
        return problems


@dataclass
class LoraConfig(Section):
    """LoRA adapters on the shared encoder (peft).

    Attributes:
        rank: adapter rank r.
        alpha: scaling numerator; the update is ``B @ A * alpha / rank``.
        dropout: dropout on the adapter input.
        target_modules: names of the encoder's linear layers to adapt (T5: q k v o wi wo); unset: T5's
            default targets, q and v (`stage1_ds.model.t5.DEFAULT_LORA_TARGETS`).
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def check(self, prefix: str) -> list[str]:
        problems = []
        if self.rank < 1:
            problems.append(f"{prefix}.rank: {self.rank}, expected at least 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"{prefix}.dropout: {self.dropout}, expected a number in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            problems.append(
                f"{prefix}.target_modules: empty, expected names such as [q, v] (or leave it out)"
            )
        return problems


@dataclass
class LossConfig(Section):
    """Masked reconstruction plus cross-timeframe consistency.

    Attributes:
        kind: mse or huber, on masked bars only.
        huber_delta: the Huber loss's delta, in feature units.
        timeframe_weights: per-timeframe weight of the reconstruction term (default 1.0 each), for
            timeframes of ``data.timeframes``.
        cross_timeframe_weight: weight of the consistency term against the reconstruction term.
        range_weight: weight of the masked bars' log-range term (`stage1_ds.model.losses.range_terms`): how
            large the hidden bars were, beside where their prices went; 0 leaves it out.
        future_weight: weight of the future-size term (`stage1_ds.model.losses.future_term`): a head on the
            encoder's states predicts the log range of the 1-minute bars after the anchor over each of
            ``data.future_minutes``; 0 leaves the head and the term out.
    """

    kind: LossKind = LossKind.MSE
    huber_delta: float = 1.0
    timeframe_weights: dict[str, float] = field(default_factory=dict)
    cross_timeframe_weight: float = 0.1
    range_weight: float = 0.0
    future_weight: float = 0.0

    def check(self, prefix: str) -> list[str]:
        problems = []
        if self.huber_delta <= 0:
            problems.append(f"{prefix}.huber_delta: {self.huber_delta}, expected a positive number")
        for key, weight in self.timeframe_weights.items():
            if weight < 0:
                problems.append(f"{prefix}.timeframe_weights.{key}: {weight}, expected a weight >= 0")
        if self.cross_timeframe_weight < 0:
            problems.append(f"{prefix}.cross_timeframe_weight: {self.cross_timeframe_weight}, expected >= 0")
        if self.range_weight < 0:
            problems.append(f"{prefix}.range_weight: {self.range_weight}, expected >= 0")
        if self.future_weight < 0:
            problems.append(f"{prefix}.future_weight: {self.future_weight}, expected >= 0")
        return problems


@dataclass
class ModelConfig(Section):
    """The Stage-1 model: per-timeframe stems and heads around one shared T5 encoder.

    Attributes:
        encoder: the shared T5 encoder.
        patch_len: bars per patch token.
        fusion: joint (all timeframes' tokens in one sequence) or per_timeframe (timeframes folded into the
            batch); one encoder call either way.
        masking: span masking of input patches.
        lora: LoRA adapters, used in the lora phase.
        loss: the training objective.
        position_bias: ``time`` (a learned bias from the difference of two tokens' patch end times in minutes,
            per head, shared by all layers; T5's index bias unused and frozen; chosen on val, see docs/model.md)
            or ``index`` (T5's relative position bias over the token sequence, the model before it).
        timeframe_pair_bias: with ``position_bias: time``, add a learned bias per head for each (query
            timeframe, key timeframe); ignored with ``index``.
        calendar: calendar inputs added to each patch token, of its end time on the data clock (UTC when
            the data was prepared on UTC): any of `CALENDAR_FEATURES`; empty: none.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    patch_len: int = 8
    fusion: Fusion = Fusion.JOINT
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    position_bias: PositionBias = PositionBias.TIME
    timeframe_pair_bias: bool = True
    calendar: list[str] = field(default_factory=list)

    def check(self, prefix: str) -> list[str]:
        problems = []
        if self.patch_len < 1:
            problems.append(f"{prefix}.patch_len: {self.patch_len}, expected at least 1")
        for name in self.calendar:
            if name not in CALENDAR_FEATURES:
                problems.append(f"{prefix}.calendar: {name!r}, expected any of {list(CALENDAR_FEATURES)}")
        if len(set(self.calendar)) != len(self.calendar):
            problems.append(f"{prefix}.calendar: {self.calendar} names a feature twice")
        return problems


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on a GPU that supports it, else fp32
    BF16 = "bf16"
    FP32 = "fp32"


class AdamOp(StrEnum):
    AUTO = "auto"  # DeepSpeed's own op where it is built or can be built, else torch's AdamW
    DEEPSPEED = "deepspeed"  # fused_adam (cpu_adam with offload), even if it must be compiled
    TORCH = "torch"  # DeepSpeed's torch_adam path: torch.optim.AdamW (fused on a GPU), no op to build


@dataclass
class PhaseConfig(Section):
    """One phase of trainability.

    Attributes:
        name: frozen, lora or full.
        until_step: the global step at which the next phase begins; None for the last phase (it runs to
            ``train.max_steps``).
        rewarmup_steps: linear re-warmup of every learning rate over this many steps at the phase start.
            Unset: none for the first phase, ``train.optimizer.warmup_steps`` for every later one (groups that
            start training at a boundary, such as LoRA adapters or the unfrozen T5 blocks, begin with fresh
            Adam moments; only the stems and heads carry theirs over).
    """

    name: Phase = Phase.FULL
    until_step: int | None = None
    rewarmup_steps: int | None = None


@dataclass
class OptimizerConfig(Section):
    """Learning rates per named parameter group, weight decay, and the warmup + cosine schedule.

    Attributes:
        lr_heads: reconstruction heads.
        lr_stems: stems and the timeframe, position and mask embeddings.
        lr_lora: LoRA adapters.
        lr_encoder_top: the top T5 block; block i gets ``lr_encoder_top * layer_decay ** (n - 1 - i)``.
            Other T5 weights (the final layer norm) get ``lr_encoder_top``.
        layer_decay: layer-wise decay factor from the top block down.
        weight_decay: applied to weight matrices; never to norms, biases or embeddings.
        warmup_steps: linear warmup from 0 at the start of the run.
        min_lr_ratio: the cosine decays every lr to this fraction of its base lr at ``train.max_steps``.
    """

    lr_heads: float = 1e-3
    lr_stems: float = 1e-3
    lr_lora: float = 5e-4
    lr_encoder_top: float = 1e-4
    layer_decay: float = 0.9
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1

    def check(self, prefix: str) -> list[str]:
        problems = []
        for key in ("lr_heads", "lr_stems", "lr_lora", "lr_encoder_top"):
            if getattr(self, key) < 0:
                problems.append(f"{prefix}.{key}: {getattr(self, key)}, expected >= 0")
        if not 0.0 < self.layer_decay <= 1.0:
            problems.append(f"{prefix}.layer_decay: {self.layer_decay}, expected a number in (0, 1]")
        if self.weight_decay < 0:
            problems.append(f"{prefix}.weight_decay: {self.weight_decay}, expected >= 0")
        if self.warmup_steps < 0:
            problems.append(f"{prefix}.warmup_steps: {self.warmup_steps}, expected >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"{prefix}.min_lr_ratio: {self.min_lr_ratio}, expected a number in [0, 1]")
        return problems


@dataclass
class TrainConfig(Section):
    """The training run.

    Attributes:
        max_steps: optimizer steps in the whole run, over all phases.
        micro_batch_size: samples per rank per forward.
        gradient_accumulation_steps: micro batches per optimizer step.
        gradient_clipping: max global gradient norm (0 disables).
        precision: auto, bf16 or fp32.
        ds_config: the DeepSpeed-only JSON (ZeRO stage, offload, communication), relative to the repository
            or absolute.
        phases: phases of trainability in order.
        optimizer: learning rates, weight decay and schedule.
        log_every_steps, eval_every_steps, save_every_steps, image_every_steps: periods in optimizer steps.
        eval_batches: validation batches per rank at each evaluation.
        keep_checkpoints: how many of the newest checkpoints to keep.
        max_bad_steps: steps with a non-finite loss that may be skipped before the run stops.
        peak_flops_per_device: for the MFU estimate; None: looked up from the GPU name (H100/H200/A100).
        adam_op: which Adam implementation ZeRO uses (`stage1_ds.train.ops.choose_adam`): ``auto`` takes
            DeepSpeed's compiled op (``fused_adam``; ``cpu_adam`` with offload) when it is built or can be
            built here and falls back to torch's AdamW otherwise; ``deepspeed`` or ``torch`` force one.
    """

    max_steps: int = 1000
    micro_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    precision: Precision = Precision.AUTO
    ds_config: str = "ds_configs/zero2.json"
    phases: list[PhaseConfig] = field(
        default_factory=lambda: [
            PhaseConfig(Phase.FROZEN, until_step=200),
            PhaseConfig(Phase.LORA, until_step=600),
            PhaseConfig(Phase.FULL),
        ]
    )
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    log_every_steps: int = 10
    eval_every_steps: int = 100
    eval_batches: int = 4
    save_every_steps: int = 200
    image_every_steps: int = 200
    keep_checkpoints: int = 3
    max_bad_steps: int = 0
    peak_flops_per_device: float | None = None
    adam_op: AdamOp = AdamOp.AUTO

    def check(self, prefix: str) -> list[str]:
        problems = []
        for key in (
            "max_steps",
            "micro_batch_size",
            "gradient_accumulation_steps",
            "log_every_steps",
            "eval_every_steps",
            "eval_batches",
            "save_every_steps",
            "image_every_steps",
            "keep_checkpoints",
        ):
            if getattr(self, key) < 1:
                problems.append(f"{prefix}.{key}: {getattr(self, key)}, expected at least 1")
        if self.gradient_clipping < 0:
            problems.append(f"{prefix}.gradient_clipping: {self.gradient_clipping}, expected >= 0")
        if self.max_bad_steps < 0:
            problems.append(f"{prefix}.max_bad_steps: {self.max_bad_steps}, expected >= 0")
        if not self.phases:
            problems.append(f"{prefix}.phases: empty, expected at least one of {[p.value for p in Phase]}")
            return problems
        previous = 0
        for i, phase in enumerate(self.phases):
            last = i == len(self.phases) - 1
            if last and phase.until_step is not None and phase.until_step != self.max_steps:
                problems.append(
                    f"{prefix}.phases[{i}].until_step: the last phase runs to max_steps; leave it out"
                )
            if not last:
                if phase.until_step is None:
                    problems.append(f"{prefix}.phases[{i}].until_step: required for every phase but the last")
                elif not previous < phase.until_step < self.max_steps:
                    problems.append(
                        f"{prefix}.phases[{i}].until_step: {phase.until_step}, expected increasing steps "
                        f"between {previous} and max_steps {self.max_steps}"
                    )
                else:
                    previous = phase.until_step
            if phase.rewarmup_steps is not None and phase.rewarmup_steps < 0:
                problems.append(f"{prefix}.phases[{i}].rewarmup_steps: {phase.rewarmup_steps}, expected >= 0")
        return problems


@dataclass
class Config(Section):
    """The root of the config tree.

    Attributes:
        seed: initial weights, data order, masks, dropout.
        license: the license of the trained weights (an SPDX id or a Hugging Face license name, e.g.
            ``apache-2.0``), written into the model card of ``stage1 convert``; None: left out.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    license: str | None = None

    def check(self, prefix: str) -> list[str]:
        """Checks across sections (each section checks its own keys)."""
        problems = (
            [
                f"data.context: true needs model.fusion: joint (the context summaries join the target's one "
                f"sequence), not {self.model.fusion.value}"
            ]
            if self.data.context and self.model.fusion != Fusion.JOINT
            else []
        )
        problems += (
            [
                f"model.loss.future_weight: {self.model.loss.future_weight}, but data.future_minutes is empty; "
                "name the horizons it predicts, e.g. data.future_minutes=[60, 240]"
            ]
            if self.model.loss.future_weight > 0 and not self.data.future_minutes
            else []
        )
        problems += [
            f"model.loss.timeframe_weights.{key}: not one of data.timeframes {self.data.timeframes}"
            for key in self.model.loss.timeframe_weights
            if key not in self.data.timeframes
        ]
        short: dict[str, list[str]] = {}  # config key -> timeframes whose window is one patch at most
        for tf in self.data.timeframes:
            if 0 < self.data.bars(tf) <= self.model.patch_len:
                per_tf = tf in self.data.window_bars_per_timeframe
                short.setdefault(
                    f"data.window_bars_per_timeframe.{tf}" if per_tf else "data.window_bars", []
                ).append(tf)
        problems += [
            f"{key}: windows of {' '.join(tfs)} of {self.data.bars(tfs[0])} bars make one patch of "
            f"model.patch_len {self.model.patch_len}; every window needs at least two patches (more than "
            f"{self.model.patch_len} bars), or masking hides it whole and leaves no visible bar"
            for key, tfs in short.items()
        ]
        masking = self.model.masking
        spans = {
            tf: self.data.bars(tf) * Timeframe(tf).minutes
            for tf in self.data.timeframes
            if tf in _ALL_TIMEFRAMES
        }
        if (
            masking.modes.get(MaskingMode.HORIZON.value, 0) > 0
            and spans
            and max(spans.values()) <= masking.horizon_minutes
        ):
            problems.append(
                f"model.masking.horizon_minutes: {masking.horizon_minutes} minutes would mask every window "
                f"whole (the longest spans {max(spans.values())} minutes: {spans}); lower it or lengthen "
                "data.window_bars"
            )
        return problems

    def problems(self) -> list[str]:
        """Every invalid value in the tree, each with its dotted key and what was expected."""
        found: list[str] = []
        # A value of the wrong type (reported when the config was loaded) can break a check that compares it.
        with contextlib.suppress(TypeError):
            found.extend(_check_tree(self, ""))
        return found

    def validate(self, source: str = "config") -> Config:
        """Check the whole tree; return the config itself.

        Raises:
            ConfigError: listing every invalid value with its dotted key and what was expected.
        """
        _raise_problems(self.problems(), source)
        return self


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
    configured_steps = raw.get("train", {}).get("max_steps", TrainConfig.max_steps)
    for override in overrides or []:
        apply_override(raw, override)
    keys = [override.partition("=")[0].strip() for override in overrides or []]
    if "train.max_steps" in keys and not any(key.startswith("train.phases") for key in keys):
        _scale_phases(raw, configured_steps)
    return config_from_dict(raw, source=str(path) if path else "defaults")


def _scale_phases(raw: dict[str, Any], configured_steps: Any) -> None:
    """``train.max_steps`` was overridden and the phases were not: move the config's own phase boundaries
    (and re-warm-ups) in proportion, so that ``train.max_steps=50`` runs every phase of a 300-step config.

    Raises:
        ConfigError: too few steps for the phases, naming the overrides that work.
    """
    train = raw.setdefault("train", {})
    steps = train.get("max_steps")
    if not isinstance(steps, int) or not isinstance(configured_steps, int) or steps < 1:
        return  # validation names the bad value
    if steps == configured_steps:
        return
    phases = train.get("phases", config_to_dict(TrainConfig().phases))
    if not isinstance(phases, list) or not all(isinstance(phase, dict) for phase in phases):
        return
    scaled = copy.deepcopy(phases)
    for phase in scaled:
        for key in ("until_step", "rewarmup_steps"):
            if isinstance(phase.get(key), int):
                phase[key] = round(phase[key] * steps / configured_steps)
    bounds = [0, *(phase.get("until_step") for phase in scaled[:-1]), steps]
    if not all(isinstance(b, int) for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
        names = [phase.get("name") for phase in phases]
        raise ConfigError(
            f"train.max_steps={steps}: too few steps for the config's {len(phases)} phases {names} (of "
            f"{configured_steps} steps); give at least {len(phases)} steps, or set the phases too, e.g. "
            f"'train.phases=[{{name: full}}]'"
        )
    train["phases"] = scaled
    log.info(
        "train.max_steps=%d replaces the config's %d: its phases are scaled in proportion (%s); give "
        "train.phases=... to set them yourself",
        steps,
        configured_steps,
        ", ".join(
            f"{phase.get('name')} to step {end}" for phase, end in zip(scaled, bounds[1:], strict=True)
        ),
    )


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


#: Keys renamed since checkpoints and exports were first written, old dotted key to new: a snapshot that
#: uses an old name still loads (with a warning), so no earlier run is lost to a rename.
RENAMED_KEYS = {"model.encoder.pretrained_path": "model.encoder.pretrained"}


#: Keys added after run snapshots (checkpoints, exports) were first written, with the values that give the
#: model those snapshots describe: a snapshot without them loads as what it was, whatever today's defaults.
SNAPSHOT_DEFAULTS = {
    "model.position_bias": PositionBias.INDEX.value,
    "model.timeframe_pair_bias": False,
    "model.calendar": [],
}


def config_from_snapshot(raw: dict[str, Any], source: str) -> Config:
    """A config from a run's own snapshot (a checkpoint's or an export's): keys it lacks that were added
    later take their `SNAPSHOT_DEFAULTS`, so an earlier run keeps its architecture."""
    raw = copy.deepcopy(raw)
    for key, value in SNAPSHOT_DEFAULTS.items():
        *path, leaf = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
        node.setdefault(leaf, value)
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build and validate a config from plain data (a YAML document or a checkpoint's snapshot)."""
    raw = _renamed(raw, source)
    problems: list[str] = []
    config = _build(Config, raw, "", problems)
    _raise_problems(problems + config.problems(), source)
    return config


def _renamed(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``raw`` with the keys of `RENAMED_KEYS` moved to their new names (both given: an error)."""
    raw = copy.deepcopy(raw)
    for old, new in RENAMED_KEYS.items():
        *path, old_leaf = old.split(".")
        node: Any = raw
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or old_leaf not in node:
            continue
        new_leaf = new.split(".")[-1]
        if new_leaf in node:
            raise ConfigError(f"{source}: {old} is the old name of {new}; give only {new}")
        log.warning("%s: %s is now called %s", source, old, new)
        node[new_leaf] = node.pop(old_leaf)
    return raw


def _raise_problems(problems: list[str], source: str) -> None:
    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))


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


def _check_tree(node: Any, prefix: str) -> list[str]:
    problems: list[str] = []
    if isinstance(node, Section):
        problems.extend(node.check(prefix.rstrip(".") or "config"))
        for f in dataclasses.fields(node):  # type: ignore[arg-type]
            value = getattr(node, f.name)
            if isinstance(value, list):
                for i, item in enumerate(value):
                    problems.extend(_check_tree(item, f"{prefix}{f.name}[{i}]."))
            else:
                problems.extend(_check_tree(value, f"{prefix}{f.name}."))
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
