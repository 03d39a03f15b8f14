"""Embeddings for downstream stages: per-timeframe encoder states of unmasked windows, per token and pooled."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stage1_ds.config import DataConfig
from stage1_ds.data.batch import Batch, TimeframeWindow
from stage1_ds.data.corpus import DataSource, open_windows
from stage1_ds.errors import ConfigError
from stage1_ds.model.heads import pool_states
from stage1_ds.model.stage1 import Stage1Model


@dataclass
class Encoded:
    """What a batch of windows is encoded to: per timeframe ``tokens`` (B, P, d_model) and ``pooled``
    (B, d_model), the mean over attended tokens; and the future-size head's forecasts ``future_size``
    (B, horizons), None for a model without the head."""

    tokens: dict[str, torch.Tensor]
    pooled: dict[str, torch.Tensor]
    future_size: torch.Tensor | None


@torch.no_grad()
def encode_outputs(model: Stage1Model, batch: Batch) -> Encoded:
    """The batch encoded as it is (windows without masks are seen whole), on the CPU in float32."""
    device = next(model.parameters()).device
    out = model(batch.to(device))
    pooled = {tf: pool_states(hidden, out.patch_valid[tf]).float().cpu() for tf, hidden in out.hidden.items()}
    tokens = {tf: hidden.float().cpu() for tf, hidden in out.hidden.items()}
    future = None if out.future_size is None else out.future_size.float().cpu()
    return Encoded(tokens, pooled, future)


def encode_batch(model: Stage1Model, batch: Batch) -> dict[str, dict[str, torch.Tensor]]:
    """Per timeframe: ``tokens`` (B, P, d_model) and ``pooled`` (B, d_model) (`encode_outputs`)."""
    out = encode_outputs(model, batch)
    return {tf: {"tokens": out.tokens[tf], "pooled": out.pooled[tf]} for tf in out.pooled}


def batch_from_arrays(features: dict[str, np.ndarray]) -> Batch:
    """A batch of raw feature arrays ``{tf: (N, L, 4)}`` (already in the scale-free feature space), all bars
    valid, no masks and no coarser-bar maps."""
    n = next(iter(features.values())).shape[0]
    windows = {}
    for tf, values in features.items():
        tensor = torch.as_tensor(values, dtype=torch.float32)
        windows[tf] = TimeframeWindow(
            features=tensor,
            valid=torch.ones(tensor.shape[:2], dtype=torch.bool),
            start_time=torch.zeros(tensor.shape[:2], dtype=torch.int64),
            parent_index=None,
            scale=torch.ones(n),
        )
    zeros = torch.zeros(n, dtype=torch.int64)
    return Batch(
        windows=windows,
        reference_price=torch.ones(n, dtype=torch.float64),
        anchor_time=zeros,
        instrument=zeros,
        sample_id=torch.arange(n),
    )


def encode(
    model: Stage1Model,
    data_dir: DataSource | None = None,
    split: str = "test",
    features: dict[str, np.ndarray] | None = None,
    batch_size: int = 256,
    max_batches: int | None = None,
    stats: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings of a prepared split (every anchor in order, or ``max_batches`` batches) or of raw arrays
    (``features``; not for a model that reads bar times: time bias or calendar inputs).

    ``stats``: feature statistics to scale with (the model's, `stage1_ds.data.store.model_stats`); None: the
    data folder's own.

    Returns:
        ``{tf}_pooled`` (N, d_model) and ``{tf}_tokens`` (N, P, d_model) per timeframe, plus
        ``sample_id``, ``anchor_time`` and ``instrument`` (N,) for a prepared split.
    """
    model.eval()
    batches: Iterable[Batch]
    if features is not None and (model.embed.time_bias is not None or model.embed.calendar is not None):
        raise ConfigError(
            "encode(features=...): this model reads bar times (model.position_bias: time or model.calendar), "
            "which raw feature arrays do not carry; encode a prepared folder (data_dir) instead"
        )
    if features is not None:
        batches = [
            batch_from_arrays({tf: v[i : i + batch_size] for tf, v in features.items()})
            for i in range(0, next(iter(features.values())).shape[0], batch_size)
        ]
    else:
        if data_dir is None:
            raise ValueError("encode needs data_dir or features")
        windows = open_windows(data_dir, split, model_data_config(model), seed=0, stats=stats)
        total = len(windows) if max_batches is None else min(len(windows), max_batches * batch_size)
        batches = (
            windows.batch(np.arange(i, min(i + batch_size, total))) for i in range(0, total, batch_size)
        )
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for tf, values in encode_batch(model, batch).items():
            parts.setdefault(f"{tf}_pooled", []).append(values["pooled"].numpy())
            parts.setdefault(f"{tf}_tokens", []).append(values["tokens"].numpy())
        if features is None:
            parts.setdefault("sample_id", []).append(batch.sample_id.numpy())
            parts.setdefault("anchor_time", []).append(batch.anchor_time.numpy())
            parts.setdefault("instrument", []).append(batch.instrument.numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def model_data_config(model: Stage1Model) -> DataConfig:
    """The windows a model was built for (every timeframe kept), with the context it reads: a model
    trained with ``data.context`` is served the other instruments of the data it is given, as in training
    (``context_max``, ``context_stale_minutes``, ``context_instruments``)."""
    return DataConfig(
        timeframes=list(model.timeframes),
        window_bars=max(model.window_bars.values()),
        window_bars_per_timeframe=dict(model.window_bars),
        channels=list(model.channels),
        **model.context_data,
    )
