"""Markdown tables and verdicts shared by the experiments' reports, from their JSON results only."""

from __future__ import annotations

from typing import Any

from stage1_ds.evaluation.probe import format_p, method_label
from stage1_ds.evaluation.reconstruction import BASELINES
from stage1_ds.evaluation.volatility import SIGN_TARGET, TARGETS, VARIANCE_TARGETS


def ratio_table(evaluation: dict[str, Any]) -> list[str]:
    modes = list(evaluation["modes"])
    timeframes = list(evaluation["modes"][modes[0]]["timeframes"])
    lines = ["| mode | " + " | ".join(timeframes) + " | overall |", "|---|" + "---|" * (len(timeframes) + 1)]
    for mode in modes:
        entry = evaluation["modes"][mode]
        cells = [f"{entry['timeframes'][tf]['ratio_to_best_baseline']:.3f}" for tf in timeframes]
        lines.append(
            f"| {mode} | " + " | ".join(cells) + f" | {entry['overall']['ratio_to_best_baseline']:.3f} |"
        )
    return [*lines, ""]


def evaluation_tables(report: dict[str, Any]) -> list[str]:
    lines = []
    for mode, entry in report["modes"].items():
        lines += [
            f"**Mode `{mode}`** ({entry['samples']} windows). MSE in feature units on masked bars; "
            "best is the baseline of lowest MSE on the val split (per timeframe; overall, those choices "
            "together), and model / best is the model's test MSE over its test MSE.",
            "",
            "| timeframe | masked | recoverable | model | "
            + " | ".join(BASELINES)
            + " | best | model / best | model / last close |",
            "|---|---|---|---|" + "---|" * len(BASELINES) + "---|---|---|",
        ]
        for tf, e in [*entry["timeframes"].items(), ("overall", entry["overall"])]:
            masked = entry["masked_share"].get(tf)
            recovered = entry["recoverable_share"].get(tf)
            lines.append(
                f"| {tf} | {'' if masked is None else f'{masked:.2f}'} | "
                f"{'' if recovered is None else f'{recovered:.3f}'} | {e['model']['mse']:.4f} | "
                + " | ".join(f"{e[b]['mse']:.4f}" for b in BASELINES)
                + f" | {e['best_baseline']} | {e['ratio_to_best_baseline']:.3f} | {e['ratio_to']['last_close']:.3f} |"
            )
        if "direction" in entry:
            lines += [
                "",
                "Direction of the predicted last close against the last visible close (95% Wilson):",
                "",
            ]
            lines += ["| timeframe | accuracy | interval | n |", "|---|---|---|---|"]
            for tf, d in entry["direction"].items():
                if d["n"]:
                    lines.append(
                        f"| {tf} | {d['accuracy']:.3f} | [{d['low']:.3f}, {d['high']:.3f}] | {d['n']} |"
                    )
        lines.append("")
    return lines


def consistency_table(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    lines = [
        "Cross-timeframe inconsistency of the reconstructions (mean squared difference between each coarser "
        "bar and the aggregate of its finer bars, coarser-scale units), and the reconstruction MSE overall:",
        "",
        "| mode | pair ending at | (a) with the loss | (b) without | (a) / (b) |",
        "|---|---|---|---|---|",
    ]
    for mode in a["modes"]:
        ours, theirs = (
            a["modes"][mode]["cross_timeframe_inconsistency"],
            b["modes"][mode]["cross_timeframe_inconsistency"],
        )
        for tf in ours:
            ratio = ours[tf] / theirs[tf] if theirs.get(tf) else float("nan")
            lines.append(
                f"| {mode} | {tf} | {ours[tf]:.5f} | {theirs.get(tf, float('nan')):.5f} | {ratio:.3f} |"
            )
        mse_a, mse_b = (
            a["modes"][mode]["overall"]["model"]["mse"],
            b["modes"][mode]["overall"]["model"]["mse"],
        )
        lines.append(f"| {mode} | reconstruction MSE | {mse_a:.4f} | {mse_b:.4f} | {mse_a / mse_b:.3f} |")
    return lines


def probe_tables(report: dict[str, Any]) -> list[str]:
    lines = [
        f"Anchors (train / val / test): {report['anchors']}; dropped (every bar of the longest look-back "
        f"flat, or the target unknown): {report['anchors_dropped']}.",
        "",
    ]
    for target in TARGETS:
        results, best = report["targets"][target], report["best_rule"][target]
        chosen = (
            f"`best_rule` = `{best['rule']}`, chosen on val (val MSE: "
            + ", ".join(f"{rule} {mse:.4f}" for rule, mse in best["val_mse"].items())
            + (
                ")."
                if target == SIGN_TARGET
                else f"); trading-time look-backs {best['windows']} bars, chosen on val with `har`."
            )
        )
        if target == SIGN_TARGET:
            header = "| method | accuracy | 95% interval | AUC | 95% interval | n |"

            def cells(r: dict[str, Any]) -> str:
                return (
                    f"{r['accuracy']:.3f} | [{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}] | "
                    f"{r['auc']:.3f} | [{r['auc_low']:.3f}, {r['auc_high']:.3f}] | {r['n']}"
                )
        else:
            header = "| method | R^2 | MSE | QLIKE | DM vs best_rule | p (HLN) | n |"

            def cells(r: dict[str, Any]) -> str:
                return (
                    f"{r['r2']:.3f} | {r['mse']:.4f} | {r['qlike']:.4f} | {r['dm_stat_vs_best_rule']:.2f} | "
                    f"{format_p(r['dm_p_vs_best_rule'])} | {r['n']}"
                )

        lines += [f"`{target}`: {chosen}", "", header, "|---" * header.count(" | ") + "|---|"]
        lines += [f"| {method_label(report, target, m)} | {cells(r)} |" for m, r in results.items()]
        lines.append("")
    return lines


def verdicts(evaluation: dict[str, Any], probed: dict[str, Any]) -> list[str]:
    """Each target of the issues, met or missed, with the measured figure."""
    lines = []
    time_mode = evaluation["modes"].get("time")
    if time_mode:
        worst = max(time_mode["timeframes"].items(), key=lambda kv: kv[1]["ratio_to_best_baseline"])
        for limit in (0.85, 0.80):
            met = worst[1]["ratio_to_best_baseline"] <= limit
            lines.append(
                f"- `time` mode at most {limit:.2f} of the best baseline (chosen on val) on every timeframe: "
                f"{'met' if met else 'missed'} (worst {worst[0]}: {worst[1]['ratio_to_best_baseline']:.3f}; "
                f"overall {time_mode['overall']['ratio_to_best_baseline']:.3f})."
            )
    horizon = evaluation["modes"].get("horizon")
    if horizon:
        scored = {tf: e for tf, e in horizon["timeframes"].items() if e["model"]["masked_values"]}
        worst = max(scored.items(), key=lambda kv: kv[1]["ratio_to"]["last_close"])
        met = worst[1]["ratio_to"]["last_close"] < 1.0
        lines.append(
            f"- `horizon` mode below 1.0 against last close on every timeframe: {'met' if met else 'missed'} "
            f"(worst {worst[0]}: {worst[1]['ratio_to']['last_close']:.3f})."
        )
    targets = probed["targets"]

    def beats_control(target: str) -> bool:
        if target == SIGN_TARGET:
            return bool(
                targets[target]["embeddings"]["auc"] > targets[target]["embeddings_random_init"]["auc"]
            )
        return bool(targets[target]["embeddings"]["mse"] < targets[target]["embeddings_random_init"]["mse"])

    wins = [t for t in TARGETS if beats_control(t)]
    lines.append(
        f"- `embeddings` beat `embeddings_random_init` on every target: "
        f"{'met' if len(wins) == len(TARGETS) else 'missed'} (better on {wins or 'none'})."
    )
    for target in VARIANCE_TARGETS:
        best = probed["best_rule"][target]["rule"]
        rule, plus = targets[target][best], targets[target]["best_rule_plus_embeddings"]
        stat, p = plus["dm_stat_vs_best_rule"], plus["dm_p_vs_best_rule"]
        change = plus["mse"] / rule["mse"] - 1
        met = stat < 0 and p < 0.05 and (change <= -0.10 or target != "rv_60m")
        lines.append(
            f"- `best_rule_plus_embeddings` beats `best_rule` (`{best}`) on `{target}` (DM p < 0.05"
            + (", MSE at least 10% lower" if target == "rv_60m" else "")
            + f"): {'met' if met else 'missed'} (R^2 {plus['r2']:.3f} vs {rule['r2']:.3f}, MSE {change:+.1%}, "
            f"DM {stat:.2f}, p {format_p(p)})."
        )
    for target in VARIANCE_TARGETS:
        best = probed["best_rule"][target]["rule"]
        alone, rule = targets[target]["embeddings"], targets[target][best]
        stat, p = alone["dm_stat_vs_best_rule"], alone["dm_p_vs_best_rule"]
        verdict = (
            "better."
            if stat < 0 and p < 0.05
            else "worse."
            if stat > 0 and p < 0.05
            else "no significant difference."
        )
        lines.append(
            f"- `embeddings` alone against `best_rule` (`{best}`) on `{target}`: R^2 {alone['r2']:.3f} vs "
            f"{rule['r2']:.3f}, DM {stat:.2f}, p {format_p(p)}: {verdict}"
        )
    sign = targets[SIGN_TARGET]["embeddings"]
    skill = sign["accuracy_low"] > 0.5 or sign["accuracy_high"] < 0.5
    lines.append(
        f"- Direction (`ret_sign_60m`) from the embeddings: accuracy {sign['accuracy']:.3f} "
        f"[{sign['accuracy_low']:.3f}, {sign['accuracy_high']:.3f}]: "
        + ("the interval excludes 50%." if skill else "the interval includes 50%: no claim of skill.")
    )
    return lines
