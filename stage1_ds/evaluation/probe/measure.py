"""`probe`: fit and score every rule and readout of every target (the package docstring)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stage1_ds.config import SPLITS
from stage1_ds.data.corpus import DataSource, data_folders, load_corpus, serve_market
from stage1_ds.encoding import model_data_config
from stage1_ds.errors import DataError
from stage1_ds.evaluation.probe.anchors import (
    SPACING_MINUTES,
    ProbeSet,
    anchor_sets,
    horizon_steps,
    market_bars,
)
from stage1_ds.evaluation.probe.fitting import Design, Fitted, fit, fit_correction
from stage1_ds.evaluation.probe.readouts import (
    ENCODERS,
    encoder_columns,
    fit_readouts,
    readout_methods,
    require_forecast,
)
from stage1_ds.evaluation.probe.report import sign_scores, variance_scores
from stage1_ds.evaluation.probe.rules import RuleChoice, choose_rule, is_refitted, rule_designs
from stage1_ds.evaluation.statistics import diebold_mariano
from stage1_ds.evaluation.volatility import (
    MARKET_STALE_MINUTES,
    MARKET_WINDOWS,
    SIGN_TARGET,
    TARGETS,
    MinuteBars,
)
from stage1_ds.model.stage1 import Stage1Model

log = logging.getLogger(__name__)

#: Methods fitted on another folder's instruments (``probe(readout_from=...)``) and scored on this one.
ZERO_SHOT_METHODS = ("best_rule_zero_shot", "embeddings_zero_shot", "best_rule_plus_embeddings_zero_shot")
#: Columns of the encoders, per encoder suffix (`ENCODERS`), kind (``embeddings``, ``forecast``) and split.
Columns = dict[str, dict[str, dict[str, np.ndarray]]]


def _probe_sets(
    model: Stage1Model,
    untrained: Stage1Model | None,
    data_dir: DataSource,
    splits: tuple[str, ...],
    max_anchors: int | None,
    seed: int,
    stats: dict[str, Any] | None,
    market: dict[str, MinuteBars] | None = None,
    context: DataSource | None = None,
) -> tuple[dict[str, ProbeSet], Columns]:
    """The probe's anchors of each split of ``data_dir`` (`anchor_sets`) and the encoders' columns at them
    (`encoder_columns`; no untrained control's for ``untrained=None``: the zero-shot readout does not use
    them); a model that reads context sees the instruments of ``context`` (None: of ``data_dir``)."""
    windows, sets = anchor_sets(model, data_dir, splits, max_anchors, seed, stats, market)
    if context is not None and model.reads_context:
        for split, served in windows.items():
            around = serve_market(served, context, model_data_config(model), seed, stats).context
            assert around is not None
            names = np.asarray(served.instruments)[served.anchor_instrument[sets[split].ids]]
            present = around.present(names, served.anchor_time[sets[split].ids])
            sets[split].context_present = float(present.sum(axis=1).mean())
    columns: Columns = {suffix: {} for suffix in ENCODERS}
    encoders = {"": model, "_random_init": untrained}
    for split, chosen in sets.items():
        for suffix, encoder in encoders.items():
            if encoder is None:
                continue
            for kind, values in encoder_columns(encoder, windows[split], chosen.ids).items():
                columns[suffix].setdefault(kind, {})[split] = values
    return sets, columns


def _rule_summary(rules: RuleChoice, y: dict[str, np.ndarray], target: str) -> dict[str, Any]:
    """What the report says of a target's rules: the one chosen, every rule's val MSE, the look-backs, and
    (with refitted twins) the best rule fitted once against the best refitted one: the refit's test gain in
    percent of MSE (positive: the refit is better), its DM p and its val gain."""
    summary: dict[str, Any] = {
        "rule": rules.best,
        "chosen_on": "val",
        "val_mse": {name: f.val_mse for name, f in rules.fitted.items()},
        "windows": rules.windows,
        "windows_chosen_on": "val",
        "windows_val_mse_with_har": rules.by_windows,
    }
    if rules.schedules:
        fixed, refitted = rules.best_of(refitted=False), rules.best_of(refitted=True)
        ours, theirs = (
            (rules.fitted[refitted].test - y["test"]) ** 2,
            (rules.fitted[fixed].test - y["test"]) ** 2,
        )
        _, p = diebold_mariano(ours, theirs, horizon_steps(target))
        summary["refit"] = {
            "best_fixed": fixed,
            "best_refitted": refitted,
            "gain": 100 * (1 - float(ours.mean()) / float(theirs.mean())),
            "p": p,
            "val_gain": 100 * (1 - rules.fitted[refitted].val_mse / rules.fitted[fixed].val_mse),
        }
    return summary


def probe(
    model: Stage1Model,
    untrained: Stage1Model,
    data_dir: DataSource,
    max_anchors: int | None = None,
    seed: int = 0,
    stats: dict[str, Any] | None = None,
    readout_from: DataSource | None = None,
    readout_stats: dict[str, Any] | None = None,
    market: DataSource | None = None,
    context: DataSource | None = None,
    forecast: bool | None = None,
    refits: bool = True,
) -> dict[str, Any]:
    """Fit and score every method on every target (see the package docstring).

    Args:
        model: the trained encoder. untrained: the same architecture, freshly initialised (the control).
        max_anchors: at most this many anchors per split (a seeded subsample); None: every one.
        stats: feature statistics to scale with (the model's); None: the folder's own.
        readout_from: another folder (instruments the model was trained on, say): the zero-shot readout.
            `ZERO_SHOT_METHODS` are then fitted on its train split (penalty chosen on its val split) and
            scored on this folder's test split, beside every method fitted on this folder's own train split
            (the zero-shot rule is this folder's best rule fitted once: a refit would read its own history).
            A folder without a train split (``--split 0 0 1``: a month of new data, say) is scored this way
            only: every method (rules included, their windows and penalties chosen on the other folder's
            val) is fitted on ``readout_from`` and scored on this folder's test split, with the usual names;
            its instruments' seasonal profiles come from the bars before its first anchor; no rule refits.
        readout_stats: feature statistics for ``readout_from``.
        market: the folders whose instruments the market rule reads (`MARKET_RULES`); None: ``data_dir``'s
            own (no market rule for a folder of one instrument).
        context: for a model trained with ``data.context``: the folders whose instruments its windows see
            (each from its own split of the same name; ``stats`` must scale them all); None: ``market``, or
            ``data_dir`` without one. A model without context ignores it.
        forecast: read the future-size head's forecasts (`readout_methods`): None where the model has the
            head, True requires it.
        refits: also refit each rule as time rolls (`stage1_ds.evaluation.probe.rules`); False: every rule
            fitted once on train (the reports measured before refits).

    Returns:
        ``targets.<target>.<method>.<metric>``; ``best_rule.<target>``: the rule chosen on val (``rule``,
        ``chosen_on``, every rule's ``val_mse``, the trading-time ``windows`` and their val MSEs with
        ``har``; ``refit``: the best refitted rule against the best rule fitted once); the anchors used and
        dropped per split; the penalties chosen (``alphas``; null: a nested readout chose no correction),
        the PCA readouts' ``components``, and each method's val MSE there (``val_mse``: what choices between
        models may read); the test predictions and the val forecasts of the rules and readouts fitted on
        this folder (``predictions``, ``val_predictions``: not in the JSON); ``forecast``: whether the head's forecasts were read; with
        ``readout_from``, ``readout_from`` and ``readout_anchors``; ``fitted_on``: ``this folder`` or
        ``readout_from`` (a folder without a train split); ``n.<target>.<split>``: the anchors each target
        was fitted, chosen and scored on (a direction needs a move); ``market``: its ``instruments``, the
        ``stale_minutes`` and ``windows`` it is read with, and per split the share of anchors on which each
        instrument is ``present``; ``context`` (a model that reads context): its folders and per split the
        mean number of context instruments present per anchor.

    Raises:
        DataError: a split has fewer than `MIN_ANCHORS` anchors (`check_anchors`); the folder has no train
            split and no ``readout_from`` is given.
        ConfigError: ``forecast`` is True for a model without a future-size head.
    """
    if forecast:
        require_forecast(model)
    read_forecast = model.has_future_head if forecast is None else forecast
    datas = load_corpus(data_dir)
    test_only = all(data.split(name, "train").empty for data in datas for name in data.instruments)
    if test_only and readout_from is None:
        raise DataError(
            f"probe: {', '.join(str(d.root) for d in datas)} has no train split (prepared with --split "
            f"{' '.join(f'{f:g}' for f in datas[0].manifest['split_fractions'])}): the rules and readouts "
            "must be fitted on another folder's train and val splits: pass --readout-from FOLDER (e.g. the "
            "data the model was trained on; its folders are listed in the export's data.json)"
        )
    instruments = market_bars(data_dir if market is None else market)
    seen = context if context is not None else market if market is not None else data_dir
    sets, columns = _probe_sets(
        model,
        untrained,
        data_dir,
        ("test",) if test_only else SPLITS,
        max_anchors,
        seed,
        stats,
        instruments,
        seen,
    )
    other_sets: dict[str, ProbeSet] = {}
    other_columns: Columns = {}
    if readout_from is not None:
        other_sets, other_columns = _probe_sets(
            model,
            untrained if test_only else None,
            readout_from,
            ("train", "val"),
            max_anchors,
            seed,
            readout_stats,
            instruments,
            seen,
        )
    if test_only:  # every method fitted on the other folder, as it is fitted on a folder's own train and val
        sets = {**other_sets, **sets}
        columns = {
            suffix: {
                kind: {**other_columns[suffix].get(kind, {}), **by_split} for kind, by_split in kinds.items()
            }
            for suffix, kinds in columns.items()
        }
    zero_shot = readout_from is not None and not test_only
    report: dict[str, Any] = {
        "anchors": {split: len(s.ids) for split, s in sets.items()},
        "anchors_dropped": {split: s.dropped for split, s in sets.items()},
        "n": {},
        "instruments": sets["test"].instruments,
        "spacing_minutes": SPACING_MINUTES,
        "targets": {},
        "best_rule": {},
        "alphas": {},
        "components": {},
        "val_mse": {},
        "predictions": {},
        "val_predictions": {},
        "forecast": read_forecast,
    }
    report["fitted_on"] = "readout_from" if test_only else "this folder"
    report["market"] = {
        "instruments": sorted(instruments),
        "stale_minutes": MARKET_STALE_MINUTES,
        "windows": list(MARKET_WINDOWS),
        "present": {
            split: {name: float(np.mean(~np.isnan(s.blocks[f"market/{name}"][:, 0]))) for name in instruments}
            for split, s in sets.items()
        },
    }
    if model.reads_context:
        report["context"] = {
            "folders": [str(folder) for folder in data_folders(seen)],
            "present_per_anchor": {split: s.context_present for split, s in sets.items()},
        }
    if readout_from is not None:
        report["readout_from"] = [str(folder) for folder in data_folders(readout_from)]
        report["readout_anchors"] = {split: len(s.ids) for split, s in other_sets.items()}
    if not read_forecast:
        for kinds in (columns, other_columns):
            for by_kind in kinds.values():
                by_kind.pop("forecast", None)
    for target in TARGETS:
        is_sign = target == SIGN_TARGET

        def used(chosen: ProbeSet, target: str = target, is_sign: bool = is_sign) -> np.ndarray:
            """The anchors of a set that score on the target (a direction needs a move)."""
            return (chosen.targets[target] != 0) if is_sign else np.ones(len(chosen.ids), bool)

        rows = {s: used(sets[s]) for s in sets}
        y = {s: sets[s].targets[target][rows[s]] for s in sets}
        report["n"][target] = {s: len(values) for s, values in y.items()}
        rules = choose_rule(sets, target, rows, y, refits=refits and not test_only)
        best = rules.best
        on_rows = {
            suffix: {
                kind: {s: v[rows[s]] for s, v in by_split.items()}
                for kind, by_split in kinds.items()
                if kind != "forecast" or not is_sign  # the head forecasts sizes, not directions
            }
            for suffix, kinds in columns.items()
        }
        fitted: dict[str, Fitted] = {**rules.fitted, **fit_readouts(rules, on_rows, y)}
        readouts = readout_methods(target, read_forecast, is_refitted(best))
        if zero_shot:  # fitted on the other folder's train and val, scored on this test
            mixed = {**other_sets, "test": sets["test"]}
            other_rows = {s: used(mixed[s]) for s in mixed}
            other_y = {s: mixed[s].targets[target][other_rows[s]] for s in mixed}
            other_rules = rule_designs(mixed, target, other_rows, rules.windows)
            # this folder's best rule fitted once, or where the other folder lacks the market it reads, the
            # best without it
            other_rule = other_rules[
                min((n for n in rules.designs if n in other_rules), key=lambda n: fitted[n].val_mse)
            ]
            values = {
                **{s: other_columns[""]["embeddings"][s][other_rows[s]] for s in other_sets},
                "test": on_rows[""]["embeddings"]["test"],
            }
            zero = {s: np.zeros(int(other_rows[s].sum())) for s in mixed}
            fitted["best_rule_zero_shot"] = fit(other_rule, other_y)
            fitted["embeddings_zero_shot"] = fit(Design(values, zero), other_y)
            fitted["best_rule_plus_embeddings_zero_shot"] = fit_correction(
                fitted["best_rule_zero_shot"], values, other_y
            )
        report["best_rule"][target] = _rule_summary(rules, y, target)
        scored = [*rules.fitted, *readouts, *(ZERO_SHOT_METHODS if zero_shot else ())]
        predictions = {name: fitted[name].test for name in scored}
        train_mean = float(y["train"].mean())
        results: dict[str, dict[str, float]] = {}
        if is_sign:
            predictions["constant"] = np.full(len(y["test"]), 1.0 if train_mean >= 0 else -1.0)
            for method, pred in predictions.items():
                results[method] = sign_scores(y["test"], pred)
        else:
            predictions["constant"] = np.full(len(y["test"]), train_mean)
            reference = (predictions[best] - y["test"]) ** 2
            for method, pred in predictions.items():
                stat, p = diebold_mariano((pred - y["test"]) ** 2, reference, horizon_steps(target))
                results[method] = {
                    **variance_scores(y["test"], pred, train_mean),
                    "dm_stat_vs_best_rule": stat,
                    "dm_p_vs_best_rule": p,
                }
        report["targets"][target] = results
        report["alphas"][target] = {name: f.alpha for name, f in fitted.items()}
        report["components"][target] = {
            name: f.components for name, f in fitted.items() if f.components is not None
        }
        report["val_mse"][target] = {name: f.val_mse for name, f in fitted.items()}
        report["predictions"][target] = {"truth": y["test"], **predictions}
        own = [*rules.fitted, *readouts]  # fitted on this folder: their val forecasts are this val split's
        report["val_predictions"][target] = {"truth": y["val"], **{n: fitted[n].by_split["val"] for n in own}}
    return report
