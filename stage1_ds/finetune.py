"""A Stage-2 model trained end to end from the rule: next-hour (or four-hour) realised variance.

`fine_tune` fits, on a prepared folder's own anchors (the probe's: an hour apart, targets strictly after
the decision time), a model that starts exactly at the strongest simple rule: the rule's forecast
(`best_rule`, chosen on val among the rules fitted once and refitted weekly) is an offset, and a small head
on the rule's standardised features and the encoder's pooled embeddings (and, for a model with a
future-size head, that head's forecasts) adds a correction whose last layer starts at zero. It is trained
in stages, each early-stopped on val and kept at its best val epoch (epoch 0 included, so a stage never
makes val worse):

1. ``head``: the head alone, the encoder frozen (its embeddings computed once);
2. ``lora``: LoRA adapters on the encoder, trained with the head (embeddings recomputed every batch);
3. ``full``: every encoder weight (the adapters merged first), at a tenth of LoRA's learning rate.

It is scored on test beside the rule and the frozen readouts the probe fits (``best_rule_plus_embeddings``
and, with a future-size head, ``best_rule_plus_forecast``): MSE, R^2 against the train mean, and
Diebold-Mariano tests (HLN, overlapping horizons counted) against the rule and against the best frozen
readout (chosen on val). Plain PyTorch on one process: a few thousand anchors and a small model, where
ZeRO's partitions would buy nothing.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stage1_ds.config import SPLITS, LoraConfig
from stage1_ds.data.corpus import load_corpus
from stage1_ds.data.store import model_stats
from stage1_ds.evaluation.probe.anchors import anchor_sets, horizon_steps
from stage1_ds.evaluation.probe.readouts import encoder_columns, fit_readouts
from stage1_ds.evaluation.probe.rules import choose_rule
from stage1_ds.evaluation.statistics import diebold_mariano
from stage1_ds.model.heads import pool_states
from stage1_ds.model.lora import adapter_parameters
from stage1_ds.model.stage1 import Stage1Model, load_export_stats

log = logging.getLogger(__name__)

#: The frozen readouts a fine-tuned model is compared with (present ones only).
FROZEN_READOUTS = (
    "best_rule_plus_embeddings",
    "best_rule_plus_forecast",
    "best_rule_plus_forecast_and_embeddings",
)


@dataclass
class Settings:
    """How `fine_tune` trains (the example's flags)."""

    target: str = "rv_60m"
    max_anchors: int | None = 10_000
    seed: int = 0
    hidden: int = 64
    dropout: float = 0.0
    weight_decay: float = 0.01
    head_epochs: int = 200
    head_lr: float = 1e-3
    head_batch: int = 256
    patience: int = 20
    lora_epochs: int = 8
    lora_lr: float = 2e-4
    lora_batch: int = 64
    lora_rank: int = 8
    lora_patience: int = 2
    full_epochs: int = 4
    full_patience: int = 1


class Stage2Head(nn.Module):
    """The rule's forecast plus a correction from its standardised features and the encoder's columns; the
    last layer starts at zero, so training starts from the rule itself."""

    def __init__(self, rule_features: int, encoder: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(encoder)
        self.dropout = nn.Dropout(dropout)
        last = nn.Linear(hidden, 1)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        self.body = nn.Sequential(nn.Linear(rule_features + encoder, hidden), nn.GELU(), last)

    def forward(self, rule: torch.Tensor, features: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
        return rule + self.body(self.dropout(torch.cat([features, self.norm(encoded)], dim=1))).squeeze(1)


def encoded(model: Stage1Model, batch: Any) -> torch.Tensor:
    """(B, columns) with gradients: every timeframe's pooled states of unmasked windows side by side, and the
    future-size head's forecasts for a model that has one."""
    out = model(batch)
    parts = [pool_states(hidden, out.patch_valid[tf]) for tf, hidden in out.hidden.items()]
    if out.future_size is not None:
        parts.append(out.future_size)
    return torch.cat(parts, dim=1).float()


def train_stage(
    groups: list[dict[str, Any]],
    epochs: int,
    patience: int,
    train_step: Callable[[torch.optim.Optimizer], float],
    val_mse: Callable[[], float],
    modules: list[nn.Module],
    name: str,
    weight_decay: float,
) -> dict[str, Any]:
    """AdamW epochs of ``train_step`` until val MSE has not improved for ``patience`` epochs; the modules
    are left at their best val epoch (epoch 0, the start, included)."""
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    best, best_epoch, best_state, history = val_mse(), 0, [copy.deepcopy(m.state_dict()) for m in modules], []
    log.info("%s: val MSE %.4f before training", name, best)
    for epoch in range(1, epochs + 1):
        train_loss = train_step(optimizer)
        mse = val_mse()
        history.append({"epoch": epoch, "train_mse": train_loss, "val_mse": mse})
        log.info("%s epoch %d: train MSE %.4f, val MSE %.4f", name, epoch, train_loss, mse)
        if mse < best:
            best, best_epoch, best_state = mse, epoch, [copy.deepcopy(m.state_dict()) for m in modules]
        elif epoch - best_epoch >= patience:
            break
    for module, state in zip(modules, best_state, strict=True):
        module.load_state_dict(state)
    return {"best_epoch": best_epoch, "val_mse": best, "epochs": history}


def fine_tune(export: Path, data: Path, settings: Settings | None = None) -> dict[str, Any]:
    """Fine-tune the exported encoder for the target on ``data``'s splits and score it (module docstring).

    Returns:
        The rule chosen, the anchors per split, the val MSE and test scores of the rule, each frozen
        readout, and the model after each stage; each stage's epochs; the settings.
    """
    settings = settings or Settings()
    torch.manual_seed(settings.seed)
    target = settings.target
    model = Stage1Model.from_pretrained(export).float()
    stats = load_export_stats(export)
    for folder in load_corpus(data):
        stats = model_stats(stats, folder, allow_other=False)
    windows, sets = anchor_sets(model, data, SPLITS, settings.max_anchors, settings.seed, stats)
    rows = {s: np.ones(len(sets[s].ids), dtype=bool) for s in SPLITS}
    y = {s: sets[s].targets[target] for s in SPLITS}
    rules = choose_rule(sets, target, rows, y)
    rule, design = rules.fitted[rules.best], rules.designs[rules.best]
    log.info("best rule on val: %s", rules.best)
    columns = {s: encoder_columns(model, windows[s], sets[s].ids) for s in SPLITS}
    frozen_columns = {"": {k: {s: columns[s][k] for s in SPLITS} for k in columns["train"]}}
    frozen = {n: f for n, f in fit_readouts(rules, frozen_columns, y).items() if n in FROZEN_READOUTS}

    def stacked(split: str) -> np.ndarray:
        """The head's encoder columns, as `encoded` gives them: the embeddings, then the forecasts."""
        return np.concatenate(
            [columns[split][k] for k in ("embeddings", "forecast") if k in columns[split]], axis=1
        )

    mean, std = design.x["train"].mean(axis=0), design.x["train"].std(axis=0) + 1e-9
    data_t = {
        s: tuple(
            torch.as_tensor(v, dtype=torch.float32)
            for v in (rule.by_split[s], (design.x[s] - mean) / std, y[s])
        )
        for s in SPLITS
    }
    cached = {s: torch.as_tensor(stacked(s), dtype=torch.float32) for s in SPLITS}
    head = Stage2Head(design.x["train"].shape[1], cached["train"].shape[1], settings.hidden, settings.dropout)
    generator = torch.Generator().manual_seed(settings.seed)

    def epoch(
        batch_size: int, columns_of: Callable[[torch.Tensor], torch.Tensor], modules: list[nn.Module]
    ) -> Callable[[torch.optim.Optimizer], float]:
        def step(optimizer: torch.optim.Optimizer) -> float:
            for module in modules:
                module.train()
            losses = []
            for batch in torch.randperm(len(y["train"]), generator=generator).split(batch_size):
                r, f, t = (v[batch] for v in data_t["train"])
                loss = (head(r, f, columns_of(batch)) - t).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
            return float(np.mean(losses))

        return step

    def predict(split: str, refresh: bool) -> np.ndarray:
        if refresh:  # the encoder moved: its columns again
            model.eval()
            with torch.no_grad():
                columns[split] = encoder_columns(model, windows[split], sets[split].ids)
            cached[split] = torch.as_tensor(stacked(split), dtype=torch.float32)
        head.eval()
        with torch.no_grad():
            return head(data_t[split][0], data_t[split][1], cached[split]).numpy().astype(np.float64)

    def val(refresh: bool) -> Callable[[], float]:
        return lambda: float(np.mean((predict("val", refresh) - y["val"]) ** 2))

    def through_encoder(batch: torch.Tensor) -> torch.Tensor:
        return encoded(model, windows["train"].batch(sets["train"].ids[batch.numpy()]))

    stages: dict[str, Any] = {}
    stages["head"] = train_stage(
        [{"params": list(head.parameters()), "lr": settings.head_lr}],
        settings.head_epochs, settings.patience,
        epoch(settings.head_batch, lambda batch: cached["train"][batch], [head]),
        val(False), [head], "head", settings.weight_decay,
    )  # fmt: skip
    predictions = {"head": predict("test", False)}

    model.add_lora(LoraConfig(rank=settings.lora_rank, alpha=2 * settings.lora_rank, dropout=0.0))
    adapters = adapter_parameters(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in adapters
    stages["lora"] = train_stage(
        [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": settings.lora_lr},
            {"params": list(head.parameters()), "lr": settings.head_lr / 3},
        ],
        settings.lora_epochs, settings.lora_patience,
        epoch(settings.lora_batch, through_encoder, [model, head]),
        val(True), [model, head], "LoRA + head", settings.weight_decay,
    )  # fmt: skip
    predictions["lora"] = predict("test", True)

    model.merge_lora()
    for parameter in model.parameters():
        parameter.requires_grad = True
    stages["full"] = train_stage(
        [
            {"params": list(model.parameters()), "lr": settings.lora_lr / 10},
            {"params": list(head.parameters()), "lr": settings.head_lr / 10},
        ],
        settings.full_epochs, settings.full_patience,
        epoch(settings.lora_batch, through_encoder, [model, head]),
        val(True), [model, head], "full + head", settings.weight_decay,
    )  # fmt: skip
    predictions["full"] = predict("test", True)

    val_mse = {"best_rule": rule.val_mse, **{n: f.val_mse for n, f in frozen.items()}}
    val_mse.update({stage: report["val_mse"] for stage, report in stages.items()})
    best_frozen = min(frozen, key=lambda n: frozen[n].val_mse)
    tests = {"best_rule": rule.test, **{n: f.test for n, f in frozen.items()}, **predictions}
    truth, train_mean = y["test"], float(y["train"].mean())
    baseline = float(np.mean((truth - train_mean) ** 2))
    scores = {}
    for name, pred in tests.items():
        loss = (pred - truth) ** 2
        versus = {}
        for other in ("best_rule", best_frozen):
            stat, p = diebold_mariano(loss, (tests[other] - truth) ** 2, horizon_steps(target))
            versus[other] = {"dm_stat": stat, "p": p}
        scores[name] = {
            "mse": float(loss.mean()),
            "r2": 1 - float(loss.mean()) / baseline,
            "vs": versus,
            "n": len(truth),
        }
    return {
        "target": target,
        "best_rule": rules.best,
        "best_frozen": best_frozen,
        "chosen_stage": min(stages, key=lambda s: stages[s]["val_mse"]),
        "anchors": {s: len(y[s]) for s in SPLITS},
        "val_mse": val_mse,
        "stages": stages,
        "test": scores,
        "settings": asdict(settings),
    }


def format_table(report: dict[str, Any]) -> str:
    """The test scores, one line per model, with its val MSE and the DM tests against the rule and the best
    frozen readout."""
    frozen = report["best_frozen"]
    lines = [
        f"{report['target']} on the test split (n={next(iter(report['test'].values()))['n']}); best rule "
        f"{report['best_rule']}; best frozen readout {frozen}; DM: negative = lower loss than that model",
        f"{'model':<40}{'val MSE':>9}{'MSE':>9}{'R2':>8}{'DM vs rule':>12}{'p':>9}{'DM vs frozen':>14}{'p':>9}",
    ]
    for name, s in report["test"].items():
        rule, other = s["vs"]["best_rule"], s["vs"][frozen]
        lines.append(
            f"{name:<40}{report['val_mse'][name]:>9.4f}{s['mse']:>9.4f}{s['r2']:>8.3f}{rule['dm_stat']:>12.2f}"
            f"{rule['p']:>9.2g}{other['dm_stat']:>14.2f}{other['p']:>9.2g}"
        )
    lines.append(f"chosen on val: the {report['chosen_stage']} stage")
    return "\n".join(lines)
