"""What the encoder is read through, beside the rule: its pooled embeddings and, for a model with a
future-size head, that head's own forecasts, each as a correction that NESTS ``best_rule``.

Per encoder (the trained one, and ``_random_init``: the same architecture and config, freshly
initialised):

- ``embeddings``: every timeframe's pooled encoder states of the unmasked windows, concatenated, alone;
- ``best_rule_plus_embeddings``: ``best_rule``'s forecast plus a ridge correction from the embeddings fitted
  to the rule's residual, its penalty chosen on val from a grid that includes no correction; where
  ``best_rule`` refits as time rolls, rule and correction refit together on the same anchors, and
  ``best_rule_plus_embeddings_frozen`` is the refitted rule plus a correction fitted once on train;
- ``best_rule_plus_embeddings_pca``: the correction from the first k principal components of the train
  embeddings, k chosen on val, 0 allowed (fitted once);
- with a future-size head (`stage1_ds.model.heads.ReconstructionHeads.future_size`, trained by
  ``model.loss.future_weight``): ``best_rule_plus_forecast``, the same nested correction from the head's
  forecasts (one column per horizon of ``data.future_minutes``), and
  ``best_rule_plus_forecast_and_embeddings``, from both.

On val none can be worse than the rule. (A single ridge over the rule's columns and the embeddings, the
earlier readout, shrinks the rule's few columns with the many embedding columns and could score worse than
the rule alone.)
"""

from __future__ import annotations

import numpy as np
import torch

from stage1_ds.data.corpus import Windows
from stage1_ds.encoding import encode_outputs
from stage1_ds.errors import ConfigError
from stage1_ds.evaluation.probe.fitting import (
    Design,
    Fitted,
    fit,
    fit_components,
    fit_correction,
    refit_correction,
)
from stage1_ds.evaluation.probe.rules import RuleChoice, is_refitted
from stage1_ds.evaluation.volatility import SIGN_TARGET
from stage1_ds.model.stage1 import Stage1Model

#: The encoders read: the trained model (no suffix) and its untrained twin.
ENCODERS = ("", "_random_init")


def readout_methods(target: str, forecast: bool, refitted: bool) -> tuple[str, ...]:
    """The readouts scored on ``target`` in report order: with the forecast readouts (a model with a
    future-size head; variance targets only) and the frozen correction (a refitted ``best_rule``)."""
    kinds = ["embeddings", "best_rule_plus_embeddings"]
    if refitted and target != SIGN_TARGET:
        kinds.append("best_rule_plus_embeddings_frozen")
    kinds.append("best_rule_plus_embeddings_pca")
    if forecast and target != SIGN_TARGET:
        kinds += ["best_rule_plus_forecast", "best_rule_plus_forecast_and_embeddings"]
    return tuple(f"{kind}{suffix}" for kind in kinds for suffix in ENCODERS)


@torch.no_grad()
def encoder_columns(
    model: Stage1Model, windows: Windows, ids: np.ndarray, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """The encoder's columns at the anchors ``ids``: ``embeddings`` (N, timeframes x d_model), each
    timeframe's pooled encoder states of the unmasked windows side by side, and, for a model with a
    future-size head, ``forecast`` (N, horizons), the head's forecasts."""
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(ids), batch_size):
        out = encode_outputs(model, windows.batch(ids[i : i + batch_size]))
        pooled = np.concatenate([out.pooled[tf].numpy() for tf in out.pooled], axis=1)
        parts.setdefault("embeddings", []).append(pooled)
        if out.future_size is not None:
            parts.setdefault("forecast", []).append(out.future_size.numpy())
    return {key: np.concatenate(values).astype(np.float64) for key, values in parts.items()}


def require_forecast(model: Stage1Model) -> None:
    """Refuse to read the forecast of a model without a future-size head.

    Raises:
        ConfigError: naming the config keys that give a model the head.
    """
    if not model.has_future_head:
        raise ConfigError(
            "this model has no future-size head (model.loss.future_weight is 0), so there is no forecast of "
            "its own to read: train one with model.loss.future_weight=1.0 and data.future_minutes=[60, 240], "
            "or read its embeddings (the probe's default readouts)"
        )


def fit_readouts(
    rules: RuleChoice, columns: dict[str, dict[str, dict[str, np.ndarray]]], y: dict[str, np.ndarray]
) -> dict[str, Fitted]:
    """Every readout of `readout_methods` (see the module docstring), fitted on the anchors of ``y``.

    Args:
        rules: the target's rules, ``best`` chosen.
        columns: per encoder suffix (`ENCODERS`; those given), its columns per kind (``embeddings``,
            ``forecast``), per split, on the anchors of ``y``.
        y: per split, the target.
    """
    best = rules.best
    base = rules.fitted[best]
    refitted = is_refitted(best)

    def nested(x: dict[str, np.ndarray]) -> Fitted:
        if not refitted:
            return fit_correction(base, x, y)
        alpha = base.alpha
        assert alpha is not None
        return refit_correction(rules.designs[best], alpha, base, x, y, rules.schedules[best])

    fitted: dict[str, Fitted] = {}
    for suffix in (s for s in ENCODERS if s in columns):
        values = columns[suffix]["embeddings"]
        zero = {s: np.zeros(len(v)) for s, v in values.items()}
        fitted[f"embeddings{suffix}"] = fit(Design(values, zero), y)
        fitted[f"best_rule_plus_embeddings{suffix}"] = nested(values)
        if refitted:
            fitted[f"best_rule_plus_embeddings_frozen{suffix}"] = fit_correction(base, values, y)
        fitted[f"best_rule_plus_embeddings_pca{suffix}"] = fit_components(base, values, y)
        forecast = columns[suffix].get("forecast")
        if forecast is not None:
            both = {s: np.concatenate([forecast[s], values[s]], axis=1) for s in values}
            fitted[f"best_rule_plus_forecast{suffix}"] = nested(forecast)
            fitted[f"best_rule_plus_forecast_and_embeddings{suffix}"] = nested(both)
    return fitted
