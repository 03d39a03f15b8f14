"""A Stage-2 model on the encoder: next-hour realised variance from the embeddings and the best rule.

    python examples/stage2_volatility.py --model exports/eurusd --data data/eurusd --json stage2.json

The target is ``rv_60m``, the log realised variance of the next 60 minutes (`stage1 probe`'s target, from
bars strictly after the decision time), on the probe's anchors (an hour apart; at most ``--max-anchors``
per split, default 10,000). Three models, on the same anchors:

- ``best_rule``: the strongest simple rule, chosen on val among the probe's HAR family (a ridge fit);
- ``linear_probe``: the best rule's forecast plus a ridge correction from every timeframe's pooled
  embedding, fitted to the rule's train residual with the penalty chosen on val, no correction allowed
  (`stage1 probe`'s ``best_rule_plus_embeddings``, `fit_correction`);
- ``fine_tuned``: the best rule's forecast plus a small network of its features and the pooled embeddings,
  trained first on the frozen encoder (``head_only``), then with LoRA adapters on the encoder trained too
  (``lora``); each stage stops early on the val split and keeps its best val epoch.

Test scores: MSE, R^2 against the train mean, and the Diebold-Mariano test (HLN-corrected, as the probe's)
of each model's squared errors against ``best_rule`` and against ``linear_probe``.

Plain PyTorch, not the project's DeepSpeed engine: a few thousand anchors, a head of a few thousand
weights and adapters of tens of thousands train on one process in a minute or two; ZeRO partitions
optimizer state across ranks, which buys nothing here and would hide the few lines a Stage-2 author needs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stage1_ds.config import SPLITS, LoraConfig
from stage1_ds.data.corpus import load_corpus
from stage1_ds.data.store import model_stats
from stage1_ds.evaluation.probe import anchor_sets, choose_rule, encoder_columns, fit_correction
from stage1_ds.evaluation.statistics import diebold_mariano
from stage1_ds.logs import setup_logging
from stage1_ds.model.lora import adapter_parameters
from stage1_ds.model.stage1 import Stage1Model, load_export_stats

log = logging.getLogger("stage2")
TARGET = "rv_60m"


class Stage2Head(nn.Module):
    """The rule's forecast plus a correction from its standardised features and the pooled embeddings; the
    last layer starts at zero, so training starts from the rule itself."""

    def __init__(self, rule_features: int, embedding: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(embedding)
        self.dropout = nn.Dropout(dropout)
        last = nn.Linear(hidden, 1)
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
        self.body = nn.Sequential(nn.Linear(rule_features + embedding, hidden), nn.GELU(), last)

    def forward(self, rule: torch.Tensor, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return rule + self.body(self.dropout(torch.cat([features, self.norm(embedding)], dim=1))).squeeze(1)


def pooled(model: Stage1Model, batch: Any) -> torch.Tensor:
    """(B, timeframes x d_model) pooled encoder states of unmasked windows, with gradients."""
    out = model(batch)
    parts = []
    for tf, hidden in out.hidden.items():
        valid = out.patch_valid[tf].unsqueeze(-1).to(hidden.dtype)
        parts.append((hidden * valid).sum(1) / valid.sum(1).clamp(min=1.0))
    return torch.cat(parts, dim=1)


def train_stage(
    parameters: Any,
    lr: float,
    epochs: int,
    patience: int,
    train_step: Callable[[torch.optim.Optimizer], float],
    val_mse: Callable[[], float],
    modules: list[nn.Module],
    name: str,
    weight_decay: float,
) -> dict[str, Any]:
    """AdamW epochs of ``train_step`` until val MSE has not improved for ``patience`` epochs; the modules
    are left at their best val epoch."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
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
    return {"best_epoch": best_epoch, "val_mse": val_mse(), "epochs": history}  # of the state kept


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = Stage1Model.from_pretrained(args.model).float()
    stats = load_export_stats(args.model)
    for folder in load_corpus(args.data):
        stats = model_stats(stats, folder, allow_other=False)
    windows, sets = anchor_sets(model, args.data, SPLITS, args.max_anchors, args.seed, stats)
    rows = {s: np.ones(len(sets[s].ids), dtype=bool) for s in SPLITS}
    y = {s: sets[s].targets[TARGET] for s in SPLITS}
    rules = choose_rule(sets, TARGET, rows, y)
    rule, design = rules.fitted[rules.best], rules.designs[rules.best]
    log.info("best rule on val: %s (%s look-backs)", rules.best, rules.windows)
    frozen = {s: encoder_columns(model, windows[s], sets[s].ids)["embeddings"] for s in SPLITS}
    linear = fit_correction(rule, frozen, y)

    mean, std = design.x["train"].mean(axis=0), design.x["train"].std(axis=0) + 1e-9

    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(rule.by_split[split], dtype=torch.float32),
            torch.as_tensor((design.x[split] - mean) / std, dtype=torch.float32),
            torch.as_tensor(y[split], dtype=torch.float32),
        )

    data = {s: tensors(s) for s in SPLITS}
    head = Stage2Head(design.x["train"].shape[1], frozen["train"].shape[1], args.hidden, args.dropout)
    generator = torch.Generator().manual_seed(args.seed)

    # Stage 1: the head on the frozen encoder's embeddings (computed once).
    embedded = {s: torch.as_tensor(frozen[s], dtype=torch.float32) for s in SPLITS}

    def epoch(
        batch_size: int, embedding_of: Callable[[torch.Tensor], torch.Tensor], modules: list[nn.Module]
    ) -> Callable[[torch.optim.Optimizer], float]:
        """One pass over the train anchors in a seeded order; ``embedding_of`` gives a batch's embeddings."""

        def step(optimizer: torch.optim.Optimizer) -> float:
            for module in modules:
                module.train()
            order, losses = torch.randperm(len(y["train"]), generator=generator), []
            for batch in order.split(batch_size):
                r, f, t = (v[batch] for v in data["train"])
                loss = (head(r, f, embedding_of(batch)) - t).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
            return float(np.mean(losses))

        return step

    def head_predict(split: str) -> np.ndarray:
        head.eval()
        with torch.no_grad():
            return head(data[split][0], data[split][1], embedded[split]).numpy().astype(np.float64)

    head_report = train_stage(
        list(head.parameters()),
        args.head_lr,
        args.head_epochs,
        args.patience,
        epoch(args.head_batch, lambda batch: embedded["train"][batch], [head]),
        lambda: float(np.mean((head_predict("val") - y["val"]) ** 2)),
        [head],
        "head only",
        args.weight_decay,
    )
    predictions = {"head_only": head_predict("test")}

    # Stage 2: LoRA adapters on the encoder, trained with the head (embeddings recomputed every batch).
    model.add_lora(LoraConfig(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.0))
    adapter_names = adapter_parameters(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in adapter_names
    adapters = [p for p in model.parameters() if p.requires_grad]

    def windows_of(batch: torch.Tensor) -> torch.Tensor:
        return pooled(model, windows["train"].batch(sets["train"].ids[batch.numpy()]))

    def lora_predict(split: str) -> np.ndarray:
        model.eval()
        embedded[split] = torch.as_tensor(
            encoder_columns(model, windows[split], sets[split].ids)["embeddings"], dtype=torch.float32
        )
        return head_predict(split)

    lora_report = train_stage(
        [
            {"params": adapters, "lr": args.lora_lr},
            {"params": list(head.parameters()), "lr": args.head_lr / 3},
        ],
        args.lora_lr,
        args.lora_epochs,
        args.lora_patience,
        epoch(args.lora_batch, windows_of, [model, head]),
        lambda: float(np.mean((lora_predict("val") - y["val"]) ** 2)),
        [model, head],
        "LoRA + head",
        args.weight_decay,
    )
    predictions["fine_tuned"] = lora_predict("test")
    predictions = {"best_rule": rule.test, "linear_probe": linear.test, **predictions}

    truth, train_mean = y["test"], float(y["train"].mean())
    baseline = float(np.mean((truth - train_mean) ** 2))
    scores = {}
    for name, pred in predictions.items():
        loss = (pred - truth) ** 2
        versus = {}
        for other in ("best_rule", "linear_probe"):
            stat, p = diebold_mariano(loss, (predictions[other] - truth) ** 2, 1)
            versus[other] = {"dm_stat": stat, "p": p}
        scores[name] = {
            "mse": float(loss.mean()),
            "r2": 1 - float(loss.mean()) / baseline,
            "vs": versus,
            "n": len(truth),
        }
    return {
        "target": TARGET,
        "best_rule": rules.best,
        "rule_windows": rules.windows,
        "anchors": {s: len(y[s]) for s in SPLITS},
        "val_mse": {
            "best_rule": rule.val_mse,
            "linear_probe": linear.val_mse,
            "head_only": head_report["val_mse"],
            "fine_tuned": lora_report["val_mse"],
        },
        "head_only": head_report,
        "lora": lora_report,
        "test": scores,
        "settings": json.loads(json.dumps(vars(args), default=str)),
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['target']} on the test split (n={next(iter(report['test'].values()))['n']}); best rule "
        f"{report['best_rule']}; DM: negative = lower loss than the column's model",
        f"{'model':<14}{'val MSE':>9}{'MSE':>9}{'R2':>8}{'DM vs rule':>12}{'p':>9}{'DM vs probe':>13}{'p':>9}",
    ]
    for name, s in report["test"].items():
        rule, probe = s["vs"]["best_rule"], s["vs"]["linear_probe"]
        lines.append(
            f"{name:<14}{report['val_mse'][name]:>9.4f}{s['mse']:>9.4f}{s['r2']:>8.3f}{rule['dm_stat']:>12.2f}"
            f"{rule['p']:>9.2g}{probe['dm_stat']:>13.2f}{probe['p']:>9.2g}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an export folder (stage1 convert)")
    parser.add_argument(
        "--data", type=Path, nargs="+", required=True, help="the prepared folder(s) it was trained on"
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--max-anchors", type=int, default=10000, help="at most this many anchors per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64, help="hidden units of the head")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout on the head's inputs")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--head-epochs", type=int, default=200)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--head-batch", type=int, default=256)
    parser.add_argument("--patience", type=int, default=20, help="head-only epochs without a better val MSE")
    parser.add_argument("--lora-epochs", type=int, default=15)
    parser.add_argument("--lora-lr", type=float, default=2e-4)
    parser.add_argument("--lora-batch", type=int, default=64)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-patience", type=int, default=3)
    args = parser.parse_args(argv)
    setup_logging()
    report = run(args)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
