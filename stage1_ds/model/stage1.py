"""`Stage1Model`: per-timeframe stems and heads around ONE shared T5 encoder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from stage1_ds.config import (
    Config,
    DataConfig,
    Fusion,
    LoraConfig,
    ModelConfig,
    Phase,
    PositionBias,
    config_from_snapshot,
)
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.features import num_features
from stage1_ds.errors import CheckpointError
from stage1_ds.model import t5
from stage1_ds.model.embed import PatchEmbedding
from stage1_ds.model.heads import ReconstructionHeads
from stage1_ds.model.lora import (
    adapter_parameters,
    base_model,
    has_lora,
    merge_lora,
    plain_name,
    wrap_with_lora,
)
from stage1_ds.model.masking import num_patches
from stage1_ds.model.time_aware import TimeBias
from stage1_ds.timeframes import sort_timeframes

#: Files of an export folder (written by `stage1_ds.export`).
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.yaml"
EXPORT_ENCODER_CONFIG = "encoder_config.json"
EXPORT_STATS = "stats.json"
EXPORT_INFO = "export_info.json"
#: The data the model was trained on (`stage1_ds.data.corpus.corpus_record`); absent in older exports.
EXPORT_DATA = "data.json"
#: The model card (`stage1_ds.card`).
EXPORT_CARD = "README.md"
#: A run's fingerprint of the data it trained and validated on (`stage1_ds.data.fingerprint`); an export
#: keeps it in its weights file's metadata under `FINGERPRINT_KEY`, so a copy of the weights keeps it.
RUN_FINGERPRINT = "fingerprint.json"
FINGERPRINT_KEY = "stage1_ds.fingerprint"
#: Where the shared encoder's parameters sit in a Stage1Model's state dict.
ENCODER_PREFIX = "encoder."
#: The files whose content makes the model what it is: weights (with the data fingerprint), encoder layout,
#: feature statistics, config and data record. A report records their hash (`export_identity`).
EXPORT_IDENTITY_FILES = (EXPORT_WEIGHTS, EXPORT_ENCODER_CONFIG, EXPORT_STATS, EXPORT_CONFIG, EXPORT_DATA)


def export_identity(export_dir: Path | str) -> dict[str, str]:
    """What a report records of the model it measured: the export folder (resolved) and one SHA-256 over
    the name and content of each of `EXPORT_IDENTITY_FILES`, so a copy or a re-export of the same
    checkpoint is the same model, and retrained weights, or an edited config or data record, are not.
    config.yaml counts without its ``license`` (the card's to state); a missing data.json (exports written
    before it existed) counts as absent.

    Raises:
        CheckpointError: the weights, layout, statistics or config are missing.
    """
    root = Path(export_dir).resolve()
    digest = hashlib.sha256()
    for name in EXPORT_IDENTITY_FILES:
        path = root / name
        if name == EXPORT_DATA and not path.is_file():
            digest.update(name.encode() + b"\0absent")
            continue
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; is {root} a folder written by 'stage1 convert'?")
        if name == EXPORT_CONFIG:
            config = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "license"}
            content = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).digest()
        else:
            with path.open("rb") as handle:
                content = hashlib.file_digest(handle, "sha256").digest()
        digest.update(name.encode() + b"\0" + content)
    return {"export": str(root), "sha256": digest.hexdigest()}


def load_export_fingerprint(export_dir: Path | str) -> dict | None:
    """The fingerprint of the data an exported model was trained and validated on (its weights' metadata);
    None for exports written before fingerprints were kept."""
    with safe_open(str(Path(export_dir) / EXPORT_WEIGHTS), framework="pt") as weights:
        text = (weights.metadata() or {}).get(FINGERPRINT_KEY)
    return None if text is None else dict(json.loads(text))


def load_export_stats(export_dir: Path | str) -> dict:
    """The feature statistics an exported model was trained with (``stats.json``)."""
    path = Path(export_dir) / EXPORT_STATS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is {path.parent} a folder written by 'stage1 convert'?")
    return dict(json.loads(path.read_text()))


def load_export_config(export_dir: Path | str) -> Config:
    """The run config stored in an export folder (``config.yaml``), validated."""
    path = Path(export_dir) / EXPORT_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; is {path.parent} a folder written by 'stage1 convert'?")
    return config_from_snapshot(yaml.safe_load(path.read_text()), source=str(path))


@dataclass
class Stage1Output:
    """reconstruction: per timeframe (B, L_tf, F); hidden: per timeframe (B, P_tf, d_model) encoder states;
    patch_valid: per timeframe (B, P_tf) bool, tokens the encoder attended to; future_size: the future-size
    head's predictions (`ReconstructionHeads.future_size`), None without the head."""

    reconstruction: dict[str, torch.Tensor]
    hidden: dict[str, torch.Tensor]
    patch_valid: dict[str, torch.Tensor]
    future_size: torch.Tensor | None = None  # (B, horizons), with ``model.loss.future_weight`` > 0


class Stage1Model(nn.Module):
    """Masked multi-timeframe reconstruction with one shared T5 encoder.

    Every timeframe's patches are embedded by its own stem, the encoder is called once per batch for all
    timeframes (``fusion: joint`` puts all tokens in one sequence so attention crosses timeframes;
    ``per_timeframe`` folds timeframes into the batch), and per-timeframe heads reconstruct the bars.
    """

    def __init__(
        self,
        config: ModelConfig,
        data: DataConfig,
        layout: t5.Layout | None = None,
    ):
        """Build stems, heads and the encoder (``layout``: an exact T5 config, used when loading an export)."""
        super().__init__()
        self.config = config
        self.timeframes = [tf.value for tf in sort_timeframes(data.timeframes)]
        self.window_bars = {tf: data.bars(tf) for tf in self.timeframes}
        self.channels = list(data.channels)
        self.encoder: nn.Module = t5.build_encoder(config.encoder, layout)
        d_model = t5.d_model(self.encoder)
        max_patches = max(num_patches(n, config.patch_len) for n in self.window_bars.values())
        features = num_features(data.volume)
        # The market around the target (`data.context`): read as one summary token per other instrument.
        self.context_data: dict[str, Any] = {
            "context": data.context,
            "context_instruments": list(data.context_instruments),
            "context_max": data.context_max,
            "context_stale_minutes": data.context_stale_minutes,
        }
        # With context, the time bias's pair table has one more "timeframe": the context summaries.
        kinds = len(self.timeframes) + (1 if data.context else 0)
        time_bias = (
            TimeBias(t5.num_heads(self.encoder), kinds, config.timeframe_pair_bias)
            if config.position_bias == PositionBias.TIME
            else None
        )
        self.embed = PatchEmbedding(
            self.timeframes,
            max_patches,
            config.patch_len,
            features,
            d_model,
            config.calendar,
            time_bias,
            context=data.context,
        )
        future = len(data.future_minutes) if config.loss.future_weight > 0 else 0
        self.heads = ReconstructionHeads(self.timeframes, config.patch_len, features, d_model, future)

    @property
    def reads_context(self) -> bool:
        """Whether the model reads the other instruments' windows (``data.context`` when it was built)."""
        return self.embed.context is not None

    @property
    def has_future_head(self) -> bool:
        """Whether the model forecasts the size of the bars after the anchor (``model.loss.future_weight`` >
        0 when it was built): `Stage1Output.future_size`."""
        return self.heads.future is not None

    def forward(self, batch: Batch) -> Stage1Output:
        """Reconstruct the target's bars. A model that reads context takes ``batch.context`` (slots not
        present, or no context at all, are left out: the market is then unknown, never zeros)."""
        names = [tf for tf in batch.windows if tf in self.embed.stems]
        tokens, valid, ends = self._embed_windows(names, batch.windows)
        market = None
        if self.embed.context is not None and batch.context is not None:
            market = self._context_tokens(names, batch.context.windows, batch.context.present)
        hidden = self._encode(names, tokens, valid, ends, market)
        reconstruction = {
            tf: self.heads(tf, h, batch.windows[tf].features.shape[1])
            for tf, h in zip(names, hidden, strict=True)
        }
        states, patch_valid = dict(zip(names, hidden, strict=True)), dict(zip(names, valid, strict=True))
        return Stage1Output(
            reconstruction=reconstruction,
            hidden=states,
            patch_valid=patch_valid,
            future_size=None if self.heads.future is None else self.heads.future_size(states, patch_valid),
        )

    def _embed_windows(
        self, names: list[str], windows: dict[str, TimeframeWindow]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per timeframe: tokens (N, P_tf, d), patch validity (N, P_tf) and patch end times (N, P_tf); masked
        bars (where a window has a mask) reach the encoder only as the mask embedding."""
        tokens, valid, ends = [], [], []
        for tf in names:
            window = windows[tf]
            tok, _, patch_valid, end_time = self.embed(
                tf, window.features, window.mask, window.valid, window.start_time
            )
            tokens.append(tok)
            valid.append(patch_valid)
            ends.append(end_time)
        return tokens, valid, ends

    def _context_tokens(
        self, names: list[str], windows: dict[str, TimeframeWindow], present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The context summaries (B, K, d), their validity (B, K) and end times (B, K) (`ContextSummary`)."""
        assert self.embed.context is not None
        b, slots = present.shape
        # B * K rows: slot k of sample b is row b * K + k
        tokens, valid, ends = self._embed_windows(names, windows)
        valid_patches = torch.cat(valid, dim=1) & present.reshape(-1, 1)
        summary, end = self.embed.context(torch.cat(tokens, dim=1), valid_patches, torch.cat(ends, dim=1))
        return summary.reshape(b, slots, -1), present, end.reshape(b, slots)

    def _encode(
        self,
        names: list[str],
        tokens: list[torch.Tensor],
        valid: list[torch.Tensor],
        ends: list[torch.Tensor],
        market: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """One encoder call for every timeframe; returns per-timeframe hidden states (B, P_tf, d). With the
        time bias, attention between any two tokens of a sequence is biased by the minutes between their
        ends (across timeframes with ``joint`` fusion, within one with ``per_timeframe``). ``market``: the
        context summaries, their validity and end times (`_context_tokens`), appended to the joint sequence
        after the target's tokens; their states are not returned."""
        lengths = [t.shape[1] for t in tokens]
        which = [
            torch.full((n,), self.embed.index[tf], device=tokens[0].device)
            for tf, n in zip(names, lengths, strict=True)
        ]
        if self.config.fusion == Fusion.JOINT:
            joined, mask = torch.cat(tokens, dim=1), torch.cat(valid, dim=1)
            time, kind = torch.cat(ends, dim=1), torch.cat(which).expand(len(joined), -1)
            if self.embed.context is not None:
                joined = joined + self.embed.context.target_role()
            if market is not None:
                summary, present, end = market
                joined, mask = torch.cat([joined, summary], dim=1), torch.cat([mask, present], dim=1)
                time = torch.cat([time, end], dim=1)
                kind = torch.cat([kind, torch.full_like(present, len(self.timeframes), dtype=kind.dtype)], 1)
            hidden = self._run(joined, mask.long(), time, kind)
            return list(hidden[:, : sum(lengths)].split(lengths, dim=1))
        if market is not None:
            raise ValueError("context windows need model.fusion: joint (Config.validate refuses the rest)")
        longest = max(lengths)
        b = tokens[0].shape[0]

        def fold(parts: list[torch.Tensor], pad: tuple[int, ...]) -> torch.Tensor:
            """(n_tf * B, P, ...): each timeframe's sequences padded to the longest, folded into the batch."""
            return torch.stack(
                [nn.functional.pad(t, (*pad, 0, longest - t.shape[1])) for t in parts]
            ).flatten(0, 1)

        timeframe = fold([w.expand(b, -1) for w in which], ())
        hidden = self._run(fold(tokens, (0, 0)), fold(valid, ()).long(), fold(ends, ()), timeframe)
        hidden = hidden.reshape(len(tokens), b, longest, -1)  # (n_tf, B, P, d)
        return [hidden[i, :, :n] for i, n in enumerate(lengths)]

    def _run(
        self, tokens: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor, timeframe: torch.Tensor
    ) -> torch.Tensor:
        """The encoder on (B, T, d) tokens: T5's own position bias, or the time bias from the (B, T) token
        end times and timeframes."""
        if self.embed.time_bias is None:
            return t5.run_encoder(self.encoder, tokens, mask)
        bias = self.embed.time_bias(ends, timeframe.to(ends.device))  # (B, heads, T, T)
        return t5.run_encoder(base_model(self.encoder), tokens, mask, position_bias=bias)

    @classmethod
    def from_pretrained(cls, export_dir: Path | str, device: torch.device | str = "cpu") -> Stage1Model:
        """Load a folder written by ``stage1 convert``, strictly, without DeepSpeed.

        Raises:
            CheckpointError: the folder or one of its files is missing, or the weights do not fit.
        """
        root = Path(export_dir)
        for name in (EXPORT_WEIGHTS, EXPORT_CONFIG, EXPORT_ENCODER_CONFIG):
            if not (root / name).is_file():
                raise CheckpointError(
                    f"{root / name}: missing; is {root} a folder written by 'stage1 convert'?"
                )
        config = load_export_config(root)
        model = cls(config.model, config.data, layout=t5.read_layout(root / EXPORT_ENCODER_CONFIG))
        state = load_file(str(root / EXPORT_WEIGHTS))
        try:
            model.load_state_dict(t5.retie(state, ENCODER_PREFIX), strict=True)
        except RuntimeError as error:
            raise CheckpointError(
                f"{root / EXPORT_WEIGHTS}: does not fit the model in {EXPORT_CONFIG}: {error}"
            ) from None
        return model.to(device).eval()

    @classmethod
    def untrained_like(cls, export_dir: Path | str, seed: int = 0) -> Stage1Model:
        """The architecture and config of an export with freshly initialised weights (a control that shows
        what training added), in eval mode on the CPU."""
        root = Path(export_dir)
        config = load_export_config(root)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls(config.model, config.data, layout=t5.read_layout(root / EXPORT_ENCODER_CONFIG))
        return model.eval()

    # -- trainability -----------------------------------------------------------------------------------

    def add_lora(self, config: LoraConfig) -> None:
        if not has_lora(self.encoder):
            self.encoder = wrap_with_lora(self.encoder, config)

    def merge_lora(self) -> None:
        self.encoder = merge_lora(self.encoder)

    def set_phase(self, phase: Phase, lora: LoraConfig | None = None) -> None:
        """Set ``requires_grad`` for a phase: stems, embeddings (the time bias included) and heads always
        train; the encoder is frozen (``frozen``), adapters only (``lora``, added if missing), or every weight
        (``full``, adapters merged first). The unused token embedding never trains, nor T5's index bias
        with ``position_bias: time``."""
        if phase == Phase.LORA:
            self.add_lora(lora or self.config.lora)
        elif phase == Phase.FULL:
            self.merge_lora()
        unused_index_bias = self.config.position_bias == PositionBias.TIME
        adapters = adapter_parameters(self)
        for name, param in self.named_parameters():
            if not name.startswith(ENCODER_PREFIX):
                param.requires_grad_(True)
            elif is_token_embedding(name) or phase == Phase.FROZEN:
                param.requires_grad_(False)
            elif unused_index_bias and t5.is_index_bias(plain_name(name)):
                param.requires_grad_(False)  # the time bias replaces it: a weight without a gradient
            else:
                param.requires_grad_(phase == Phase.FULL or name in adapters)


COMPONENTS = ("stems", "embeddings", "encoder", "lora", "heads")


def is_token_embedding(name: str) -> bool:
    """Whether a Stage1Model parameter is the encoder's unused token embedding (see `stage1_ds.model.t5`)."""
    return name.startswith(ENCODER_PREFIX) and t5.is_token_embedding(
        plain_name(name.removeprefix(ENCODER_PREFIX))
    )


def component_of(name: str, adapters: frozenset[str] = frozenset()) -> str | None:
    """Which report component a parameter belongs to (None for the unused token embedding); ``adapters``:
    the model's LoRA adapter weights (`adapter_parameters`)."""
    if name.startswith("embed.stems."):
        return "stems"
    if name.startswith("embed."):
        return "embeddings"
    if name.startswith("heads."):
        return "heads"
    if is_token_embedding(name):
        return None
    return "lora" if name in adapters else "encoder"


def parameter_report(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per component (stems, embeddings, encoder, lora, heads) and in total: parameters and trainable ones.
    The unused token embedding is not model capacity and is left out."""
    report = {c: {"total": 0, "trainable": 0} for c in (*COMPONENTS, "all")}
    adapters = adapter_parameters(model)
    for name, param in model.named_parameters():
        component = component_of(name, adapters)
        if component is None:
            continue
        for key in (component, "all"):
            report[key]["total"] += param.numel()
            report[key]["trainable"] += param.numel() if param.requires_grad else 0
    return report


def format_parameter_report(report: dict[str, dict[str, int]]) -> str:
    lines = [f"{'component':<12}{'parameters':>16}{'trainable':>16}"]
    for component, counts in report.items():
        lines.append(f"{component:<12}{counts['total']:>16,}{counts['trainable']:>16,}")
    return "\n".join(lines)
