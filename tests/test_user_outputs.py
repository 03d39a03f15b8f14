"""What a user sees and keeps: outputs checked before computing, figures in price and time with fixed
colours, every figure in the tables, short files that get computed advice, phases that follow max_steps."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.dates import ConciseDateFormatter
from matplotlib.patches import Rectangle

from stage1_ds.cli import main
from stage1_ds.config import DataConfig, MaskingConfig, MaskingMode, load_config
from stage1_ds.data.batch import Batch
from stage1_ds.data.corpus import open_windows
from stage1_ds.data.features import to_prices
from stage1_ds.data.figures import (
    MAX_FINEST_SPAN,
    MAX_SPAN,
    MAX_WIDTH_INCHES,
    METHOD_COLOURS,
    MIN_CANDLE_PIXELS,
    MIN_MASKED_BARS,
    MIN_WIDTH_INCHES,
    ExampleWindow,
    MseBar,
    Panel,
    choose_example,
    error_bars_figure,
    example_figure,
    example_window,
    mse_figure,
    window_spans,
)
from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic, summary_table
from stage1_ds.data.store import load_prepared
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.errors import ConfigError, DataError
from stage1_ds.evaluation import evaluate, format_report
from stage1_ds.evaluation.probe.anchors import MIN_ANCHORS, RECOMMENDED_ANCHORS, ProbeSet, check_anchors
from stage1_ds.model.baselines import last_close, linear_interpolation
from stage1_ds.model.masking import MaskedWindows
from stage1_ds.model.stage1 import Stage1Model, load_export_config
from stage1_ds.timeframes import Timeframe
from stage1_ds.train.metrics import MetricsWriter, example_sample, training_example

VOLUME_DATA = DataConfig(window_bars=32, channels=["ohlc", "volume"])


def test_an_unwritable_output_fails_before_anything_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command checks its outputs first: with a model and data that do not exist, the error names the
    output, not the missing model (which would be read first otherwise)."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder is wanted")
    missing = ["--model", str(tmp_path / "no_model"), "--data", str(tmp_path / "no_data")]
    commands = {
        "probe --json": ["probe", *missing, "--json", str(blocker / "p.json")],
        "evaluate --json": ["evaluate", *missing, "--json", str(blocker / "deeper" / "e.json")],
        "encode --out": ["encode", *missing, "--out", str(blocker / "embeddings")],
        "convert --out": ["convert", str(tmp_path / "no_run"), "--out", str(blocker / "export")],
        "train --out": ["train", "--config", "configs/demo_cpu.yaml", "--data", "x", "--out", str(blocker)],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert f"{blocker} is a file, where a folder is expected" in err, (name, err)
    (tmp_path / "a_folder").mkdir()
    assert main(["evaluate", *missing, "--json", str(tmp_path / "a_folder")]) == 2
    assert "is a folder; expected a file name" in capsys.readouterr().err


def test_reports_go_into_new_folders_and_encode_names_its_instruments(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    report = tmp_path / "new" / "dir" / "eval.json"
    args = ["--model", str(trained_export), "--data", str(synthetic_small), "--split", "val"]
    assert (
        main(
            [
                "evaluate",
                *args,
                "--mode",
                "time",
                "--batches",
                "1",
                "--batch-size",
                "4",
                "--json",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["split"] == "val"
    assert (report.parent / "eval_time_example.png").stat().st_size > 0
    out = tmp_path / "deep" / "embeddings"
    assert main(["encode", *args, "--out", str(out), "--batch-size", "4", "--max-batches", "1"]) == 0
    names = json.loads((out / "instruments.json").read_text())
    codes = np.load(out / "instrument.npy")
    assert names == {"0": "SYNTH"} and set(codes.tolist()) == {0}


def test_a_converted_export_is_readable_by_the_group(trained_export: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for path in trained_export.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


def test_probe_refuses_too_few_anchors_and_warns_below_the_recommended_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def chosen(n: int) -> ProbeSet:
        return ProbeSet(np.arange(n), np.arange(n), {}, {}, {"flat_history": 2, "unknown_target": 0})

    with pytest.raises(DataError, match=rf"the val split of data/month has {MIN_ANCHORS - 1} usable anchors"):
        check_anchors(chosen(MIN_ANCHORS - 1), "val", Path("data/month"), 3000)
    with caplog.at_level(logging.WARNING):
        check_anchors(chosen(RECOMMENDED_ANCHORS - 1), "test", Path("data/month"), 3000)
        check_anchors(chosen(RECOMMENDED_ANCHORS - 1), "train", Path("data/month"), 3000)
        check_anchors(chosen(150), "test", Path("data/month"), 150)  # all that was asked for
    assert [r.getMessage() for r in caplog.records] == [
        f"probe: only {RECOMMENDED_ANCHORS - 1} test anchors of data/month (fewer than {RECOMMENDED_ANCHORS}): "
        "intervals and tests on this split will be wide"
    ]


def test_probe_on_a_month_names_the_empty_split_instead_of_a_traceback(
    trained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    month = tmp_path / "month"
    prepare_synthetic(
        month, days=31, seed=3, options=PrepareOptions(window_bars=16, split_fractions=(0.5, 0.25, 0.25))
    )
    args = [
        "--model",
        str(trained_export),
        "--data",
        str(month),
        "--json",
        str(tmp_path / "p.json"),
        "--allow-other-stats",
        "--allow-overlap",  # the same synthetic market as the model's: its month lies in the training period
    ]
    assert main(["probe", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(r"the (train|val) split of .*month has \d+ usable anchors", err), err
    assert f"needs at least {MIN_ANCHORS} in each split" in err and "--split TRAIN VAL TEST" in err
    assert "--split 0 0 1 --window-bars 16) and fit the readout on a longer folder" in err, "the model's"


def test_the_advice_on_a_month_of_bars_leads_to_a_probe_that_runs(
    trained_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A month of an instrument the model never saw, taken through `prepare` and `probe` by doing what each
    error says, literally, to a probe report: one test split of the month, every fit on the model's data."""
    bars = generate_synthetic_m1(31, 5)
    names = ("open", "high", "low", "close")
    frame = pd.DataFrame({"timestamp": bars.start, **{k: bars.ohlc[:, i] for i, k in enumerate(names)}})
    frame.to_csv(tmp_path / "MONTH.csv", index=False)
    prepare = ["prepare", "--input", str(tmp_path / "MONTH.csv"), "--out", str(tmp_path / "month")]
    assert main(prepare) == 2
    assert "the file looks like a CSV file with a header: --format csv" in capsys.readouterr().err
    prepare += ["--format", "csv"]
    assert main(prepare) == 2
    err = capsys.readouterr().err
    advice = re.search(r"To score a model already trained .*?: (--split 0 0 1) --window-bars W", err)
    assert advice is not None, err
    window = load_export_config(trained_export).data.window_bars  # "W, the model's data.window_bars"
    assert main([*prepare, *advice.group(1).split(), "--window-bars", str(window)]) == 0
    capsys.readouterr()
    probe = ["probe", "--model", str(trained_export), "--data", str(tmp_path / "month")]
    probe += ["--json", str(tmp_path / "month.json")]
    assert main(probe) == 2
    err = capsys.readouterr().err
    assert "has no train split (prepared with --split 0 0 1)" in err and "pass --readout-from FOLDER" in err
    assert "its folders are listed in the export's data.json" in err
    trained_on = json.loads((trained_export / "data.json").read_text())["folders"]
    assert main([*probe, "--readout-from", *trained_on]) == 0
    report = json.loads((tmp_path / "month.json").read_text())
    assert report["fitted_on"] == "readout_from" and report["readout_from"] == trained_on
    assert report["instruments"] == ["MONTH"] and report["anchors"]["test"] >= MIN_ANCHORS
    assert report["stats_source"] == "folder", "the month's own scales, fitted on the bars before its anchors"
    assert "best_rule_plus_embeddings" in report["targets"]["rv_60m"]
    assert "best_rule_plus_embeddings_zero_shot" not in report["targets"]["rv_60m"], "every fit is elsewhere"
    manifest_path = tmp_path / "month" / "manifest.json"  # as an older version wrote it: no lead-in
    manifest = json.loads(manifest_path.read_text())
    test = manifest["instruments"]["MONTH"]["splits"]["test"]
    test["anchor_start"] = test["history_start"]
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    probe[-1] = str(tmp_path / "again.json")
    assert main([*probe, "--readout-from", *trained_on]) == 2
    assert "no bars before its first anchor to fit the rules' seasonal profile on" in capsys.readouterr().err


def _example_batch(folder: Path) -> tuple[object, np.ndarray, object]:
    windows = open_windows(folder, "val", VOLUME_DATA, seed=0)
    masked = MaskedWindows(windows, MaskingConfig(modes={MaskingMode.TIME.value: 1.0}), 8, seed=0)
    ids = np.array([5, 400])
    return windows, ids, masked.batch(ids)


def test_the_example_window_is_in_price_against_time_with_reconstructions_only_on_masked_bars(
    synthetic_small: Path,
) -> None:
    windows, ids, batch = _example_batch(synthetic_small)
    model, baseline = last_close(batch), linear_interpolation(batch)
    names = dict.fromkeys(batch.windows, "linear_interpolation")
    data = load_prepared(synthetic_small)
    unit = float(data.manifest["instruments"]["SYNTH"]["volume_unit"])
    example = example_window(batch, 1, model, baseline, names, "SYNTH", "time", volume_unit=unit)
    assert len(example.panels) == len(batch.windows)
    assert example.volume_units == "SYNTH's volume units"
    for panel in example.panels:  # volume in the instrument's own units: the folder's units times its unit
        begin, end = data.rows("SYNTH", Timeframe(panel.timeframe))
        bars = data.bars[Timeframe(panel.timeframe)]
        at = begin + np.searchsorted(bars.start[begin:end], panel.start.astype(np.int64))
        np.testing.assert_allclose(panel.volume, np.asarray(bars.units)[at] * unit, rtol=1e-4)
    model_error = baseline_error = 0.0
    for panel in example.panels:
        window = batch.windows[panel.timeframe]
        valid, mask = window.valid[1].numpy(), window.mask[1].numpy()  # type: ignore[union-attr]
        truth = windows.true_ohlc(ids, Timeframe(panel.timeframe))[1][valid]
        np.testing.assert_allclose(panel.ohlc, truth, rtol=1e-6)
        assert np.array_equal(panel.start, window.start_time[1].numpy()[valid].astype("datetime64[s]"))
        assert np.array_equal(panel.masked, mask[valid])
        for drawn in (panel.model, panel.baseline):
            assert np.isnan(drawn[~panel.masked]).all() and np.isfinite(drawn[panel.masked]).all()
        expected = to_prices(
            model[panel.timeframe][1:2, :, :4].numpy(),
            batch.reference_price[1:2].numpy(),
            window.scale[1:2].numpy(),
        )[0][valid]
        np.testing.assert_allclose(panel.model[panel.masked], expected[panel.masked], rtol=1e-9)
        assert panel.volume is not None and panel.model_volume is not None
        assert np.isnan(panel.model_volume[~panel.masked]).all()
        truth_features = window.features[1][window.valid[1]][:, :4]
        chosen = window.mask[1][window.valid[1]]  # type: ignore[index]
        model_error += float(
            (model[panel.timeframe][1][window.valid[1]][:, :4] - truth_features)[chosen].pow(2).sum()
        )
        baseline_error += float(
            (baseline[panel.timeframe][1][window.valid[1]][:, :4] - truth_features)[chosen].pow(2).sum()
        )
    assert example.mse_ratio == pytest.approx(model_error / baseline_error, rel=1e-5)
    anchor = str(np.datetime64(int(batch.anchor_time[1]), "s")).replace("T", " ")
    assert example.title.startswith(f"SYNTH, window ending {anchor} UTC, masking mode time")
    assert f"{example.mse_ratio:.2f}" in example.title

    figure = example_figure(example)
    axes = figure.get_axes()
    assert len(axes) == 2 * len(example.panels)  # price and volume per timeframe
    assert figure._suptitle is not None and figure._suptitle.get_text() == example.title
    assert all(isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter) for ax in axes)
    assert axes[0].get_ylabel() == "m1 price" and axes[1].get_ylabel() == "m1 volume\n(SYNTH's volume units)"


def test_evaluate_draws_a_window_that_follows_the_seed_and_tensorboard_keeps_one(
    synthetic_small: Path, trained_export: Path, tmp_path: Path
) -> None:
    config = load_config(None, ["data.window_bars=32", "data.channels=[ohlc, volume]", "model.patch_len=8"])
    ends = set()
    for seed in (1, 2, 3):
        report = evaluate(
            last_close, synthetic_small, config, "test", 1, 16, seed=seed, modes=(MaskingMode.TIME,)
        )
        ends.add(report["modes"]["time"]["example"].end_utc)
    assert len(ends) > 1, "the example follows --seed"
    model = Stage1Model.from_pretrained(trained_export)
    export_config = load_export_config(trained_export)
    data = MaskedWindows(
        open_windows(synthetic_small, "val", export_config.data, seed=1),
        export_config.model.masking,
        export_config.model.patch_len,
        seed=export_config.seed,
    )
    writer = MetricsWriter(tmp_path / "tb", enabled=True)
    drawn = []
    for step in (1, 2):
        writer.masked_window(model, data, torch.device("cpu"), step)
        drawn.append(writer._example_id)
    writer.close()
    assert drawn[0] is not None and drawn == [drawn[0], drawn[0]] == [example_sample(data)] * 2, (
        "one window all run"
    )
    example = training_example(model, data, torch.device("cpu"), drawn[0])
    spans = [panel.span for panel in example.panels]
    assert example.panels[0].span <= MAX_FINEST_SPAN and max(spans) <= MAX_SPAN


def _candidates(folder: Path, seed: int = 0) -> Batch:
    """A time-masked batch of 64 val windows spread over the split (some hold a weekend)."""
    windows = open_windows(folder, "val", VOLUME_DATA, seed=0)
    masked = MaskedWindows(windows, MaskingConfig(modes={MaskingMode.TIME.value: 1.0}), 8, seed=seed)
    return masked.batch(np.unique(np.linspace(0, len(masked) - 1, 64).astype(np.int64)))


def test_the_drawn_window_is_chosen_legible_and_follows_the_seed(synthetic_small: Path) -> None:
    """Trading in every panel, no break inside the finest, no coarser panel mostly gap, several masked bars;
    which of those follows the seed; windows with a weekend in their hourly panel are never drawn."""
    batch = _candidates(synthetic_small)
    everyone = np.ones(batch.size, bool)
    spans = [window_spans(batch, k) for k in range(batch.size)]
    broken = {k for k, s in enumerate(spans) if s["m1"] > MAX_FINEST_SPAN or max(s.values()) > MAX_SPAN}
    assert broken and len(broken) < batch.size, "the data has weekends inside some windows, not all"
    chosen = {choose_example(batch, everyone, seed) for seed in range(8)}
    assert len(chosen) > 2, "the seed picks among the legible windows"
    for k in chosen:
        assert k not in broken
        masked = sum(int((w.mask[k] & w.valid[k]).sum()) for w in batch.windows.values())
        assert masked >= MIN_MASKED_BARS
    first, second = sorted(chosen)[:2]
    batch.windows["m1"].start_time[first, 16:] += 600  # a 10-minute break
    pair = np.isin(np.arange(batch.size), [first, second])
    assert {choose_example(batch, pair, seed) for seed in range(8)} == {second}, "a break in the finest panel"
    only_broken = np.isin(np.arange(batch.size), sorted(broken))
    fallback = choose_example(batch, only_broken, 0)
    assert fallback in broken and max(spans[fallback].values()) == min(max(spans[k].values()) for k in broken)
    assert choose_example(batch, np.zeros(batch.size, bool), 0) is None


def test_masked_candles_are_drawn_wide_enough_and_the_legend_stays_off_the_candles() -> None:
    """A 128-bar window (the default) with a weekend in its h4 panel: the figure widens until the model's
    candles on masked bars are at least `MIN_CANDLE_PIXELS` wide (measured on the drawn patches), and the
    one legend lies outside every panel."""
    start = np.datetime64("2024-03-04T00:00", "s")
    panels = []
    for tf, minutes in (("m1", 1), ("h4", 240)):
        times = start + np.arange(128) * np.timedelta64(60 * minutes, "s")
        if tf == "h4":  # a weekend, as FX h4 windows hold: 12 bar lengths without bars
            times[30:] += np.timedelta64(48 * 3600, "s")
        ohlc = np.tile([1.10, 1.11, 1.09, 1.105], (128, 1))
        masked = np.zeros(128, bool)
        masked[60:64] = True
        drawn = np.where(masked[:, None], ohlc, np.nan)
        panels.append(Panel(tf, times, ohlc, masked, drawn, drawn, "linear_interpolation"))
    example = ExampleWindow("EURUSD", "2024-03-20 08:00:00", "time", 0.9, panels)
    assert MIN_WIDTH_INCHES < example.width_inches <= MAX_WIDTH_INCHES
    assert example.masked_candle_pixels >= MIN_CANDLE_PIXELS
    figure = example_figure(example)
    figure.canvas.draw()
    model = to_rgba(METHOD_COLOURS["model"])
    for ax in figure.get_axes():
        widths = [
            ax.transData.transform((patch.get_x() + patch.get_width(), 0))[0]
            - ax.transData.transform((patch.get_x(), 0))[0]
            for patch in ax.patches
            if isinstance(patch, Rectangle) and patch.get_edgecolor() == model
        ]
        assert len(widths) == 4 and min(widths) >= 0.9 * MIN_CANDLE_PIXELS, (ax.get_ylabel(), widths)
    (legend,) = figure.legends
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in figure.get_axes())
    assert [t.get_text() for t in legend.get_texts()][:2] == ["true bars", "model (masked bars)"]
    assert not any(ax.get_legend() for ax in figure.get_axes()), "no legend over the candles"


def test_bar_charts_keep_one_colour_per_method_and_say_n() -> None:
    with_mean = {"m1": {"model": 1.0, "linear_interpolation": 2.0, "train_mean": 3.0, "last_close": 2.5}}
    without = {"m1": {"model": 1.0, "linear_interpolation": 2.0, "last_close": 2.5}}
    for errors in (with_mean, without):
        figure = error_bars_figure(errors, "time", 64, {"m1": 310})
        ax = figure.get_axes()[0]
        for container in ax.containers:
            method = container.get_label()
            assert container.patches[0].get_facecolor() == to_rgba(METHOD_COLOURS[method]), method
        assert ax.get_xticklabels()[0].get_text() == "m1\nn=310" and "64 windows" in ax.get_title()


def test_the_probe_figure_sets_each_readouts_mse_beside_the_rules_with_intervals() -> None:
    """A panel per target, a bar per method with its interval, the rule's MSE a dashed line through all,
    a declined correction marked in its label and hatched; the split and instruments in the title."""
    panels = {
        "rv_60m": [MseBar("best_rule", 0.40, 0.02), MseBar("the embeddings", 0.38, 0.02)],
        "rv_240m": [MseBar("best_rule", 0.30, 0.03), MseBar("the embeddings", 0.30, 0.03, declined=True)],
    }
    figure = mse_figure(panels, "test", ["EURUSD", "GBPUSD"])
    first, second = figure.get_axes()
    assert [t.get_text() for t in first.get_yticklabels()] == ["best_rule", "the embeddings"]
    assert "the embeddings (declined on val)" in [t.get_text() for t in second.get_yticklabels()]
    widths = sorted(round(p.get_width(), 3) for p in first.patches)
    assert widths == [0.38, 0.40]
    assert [p.get_hatch() for p in second.patches] == ["", "//"]
    (dashed,) = [line for line in first.get_lines() if line.get_linestyle() == "--"]
    assert dashed.get_xdata()[0] == 0.40, "the rule's MSE, dashed, through every bar"
    assert figure._suptitle is not None and "test split of EURUSD, GBPUSD" in figure._suptitle.get_text()


def test_the_evaluate_table_prints_the_volume_errors(synthetic_small: Path) -> None:
    config = load_config(None, ["data.window_bars=32", "data.channels=[ohlc, volume]", "model.patch_len=8"])
    report = evaluate(
        last_close, synthetic_small, config, "test", batches=1, batch_size=8, modes=(MaskingMode.TIME,)
    )
    table = format_report(report)
    entry = report["modes"]["time"]
    assert "volume MSE on masked bars" in table
    m1 = entry["timeframes"]["m1"]
    row = next(
        line
        for line in table.splitlines()[
            table.splitlines().index("volume MSE on masked bars (feature units):") :
        ]
        if line.startswith("m1 ")
    )
    assert row.split()[1:3] == [
        f"{m1['model']['volume_mse']:.4f}",
        f"{m1['linear_interpolation']['volume_mse']:.4f}",
    ]
    price_only = evaluate(
        last_close,
        synthetic_small,
        load_config(None, ["data.window_bars=32"]),
        "test",
        1,
        8,
        modes=(MaskingMode.TIME,),
    )
    assert "volume MSE" not in format_report(price_only)


def test_a_month_of_bars_gets_flags_that_work_and_a_warning_about_thin_splits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(DataError, match=r"Flags that fit this data: (.*)") as error:
        prepare_synthetic(tmp_path / "a", days=31, seed=1, options=PrepareOptions(window_bars=32))
    proposal = re.search(r"--split ([\d. ]+) \(keeping --window-bars 32\)", str(error.value))
    assert proposal is not None, str(error.value)
    fractions = tuple(float(f) for f in proposal.group(1).split())
    with caplog.at_level(logging.WARNING):
        prepare_synthetic(
            tmp_path / "b",
            days=31,
            seed=1,
            options=PrepareOptions(window_bars=32, split_fractions=fractions),  # type: ignore[arg-type]
        )
    warned = [r.getMessage() for r in caplog.records if "fewer than a day's worth" in r.getMessage()]
    assert warned and all(
        re.match(r"SYNTH: the (val|test) split's windows can end at only \d+ 1-minute bars", w)
        for w in warned
    )
    with pytest.raises(DataError, match=r"Flags that fit this data: --window-bars (\d+) --split") as error:
        prepare_synthetic(tmp_path / "c", days=31, seed=1, options=PrepareOptions())
    both = re.search(r"Flags that fit this data: --window-bars (\d+) --split ([\d. ]+)\.", str(error.value))
    assert both is not None
    window, split = int(both.group(1)), tuple(float(f) for f in both.group(2).split())
    prepare_synthetic(
        tmp_path / "d", days=31, seed=1, options=PrepareOptions(window_bars=window, split_fractions=split)
    )  # type: ignore[arg-type]


def test_the_summary_table_is_as_wide_as_its_longest_instrument_name(synthetic_small: Path) -> None:
    manifest = json.loads((synthetic_small / "manifest.json").read_text())
    manifest["instruments"]["A_VERY_LONG_INSTRUMENT_NAME"] = manifest["instruments"]["SYNTH"]
    lines = summary_table(manifest).splitlines()
    column = lines[0].index("timeframe")
    rows = [line for line in lines if line.split()[1:2] == ["m1"]]
    assert len(rows) == 2 and all(row.index(" m1 ") + 1 == column for row in rows)


def test_max_steps_alone_scales_the_configs_phases(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        config = load_config("configs/demo_cpu.yaml", ["train.max_steps=50"])
    phases = config.train.phases
    assert [p.until_step for p in phases] == [17, 33, None] and [p.rewarmup_steps for p in phases] == [
        None,
        3,
        3,
    ]
    assert (
        "its phases are scaled in proportion (frozen to step 17, lora to step 33, full to step 50)"
        in caplog.text
    )
    chosen = load_config("configs/demo_cpu.yaml", ["train.max_steps=50", "train.phases=[{name: full}]"])
    assert len(chosen.train.phases) == 1
    assert load_config("configs/demo_cpu.yaml", ["train.max_steps=300"]).train.phases[0].until_step == 100
    with pytest.raises(
        ConfigError, match=r"train\.max_steps=2: too few steps .*'train\.phases=\[\{name: full\}\]'"
    ):
        load_config("configs/demo_cpu.yaml", ["train.max_steps=2"])
