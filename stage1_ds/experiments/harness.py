"""The harness every experiment runs in: train (or read back) its runs, convert, measure, write its report.

An experiment is a recipe (`Experiment`): ``measure`` trains what it needs through `trained_run` or
`train_for` and returns its results as plain JSON data; ``render`` turns those results, and nothing else,
into the whole markdown of its report; ``figure`` (optional) draws from them too. `write_report` writes the
three files the experiment owns, ``docs/quality/<name>.json``, ``.md`` and ``.png``, whole, and touches no
other file: regenerating one experiment never changes another's report. ``scripts/quality_report.py
--experiment NAME`` runs one; ``--render`` rewrites its markdown from its stored JSON without training.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stage1_ds.config import Config, PhaseConfig, load_config, resolve_path
from stage1_ds.data.corpus import DataSource
from stage1_ds.data.store import load_prepared
from stage1_ds.export import convert
from stage1_ds.outputs import remove_own_folder
from stage1_ds.train.checkpoint import TRAIN
from stage1_ds.train.loop import train
from stage1_ds.version import code_version

log = logging.getLogger(__name__)

#: Where each experiment's report lives (beside docs/quality.md, the page that links them).
QUALITY_DIR = Path("docs/quality")
#: The demo-sized model most experiments train.
DEMO_CONFIG = "configs/demo_cpu.yaml"
#: Held out by the transfer, ladder and context experiments: an FX pair, a commodity, an equity index.
TRANSFER_HELD_OUT = ("USDCHF", "BCOUSD", "SPXUSD")
#: The instrument trained on that the multi-instrument experiments also score.
TRAINED_SCORED = "EURUSD"


@dataclass
class Options:
    """What a run of an experiment is given (``scripts/quality_report.py``'s arguments); each experiment
    reads the fields it needs and says so in its docstring.

    Attributes:
        data: a prepared folder, or a root holding one prepared folder per instrument.
        out: runs, exports and measurements go here (read back by a later run).
        steps: training steps per run (an experiment's default where empty).
        minutes: training minutes per run at a measured speed (the main report, without ``steps``).
        held_out: instruments no model trains on (multi-instrument experiments).
        trained: the instrument of the training corpus that multi-instrument experiments also score.
        scored: instruments an experiment scores (its default where empty).
        signals: the ladder trains the missing rungs of these signals only (every one where empty).
        max_anchors: probe anchors per split at most (None: every qualifying anchor).
        batches: evaluation batches of 64 windows per masking mode.
        overrides: ``key=value`` applied to every run's config.
        read_only: report what is measured already; train and measure nothing (the ladder).
    """

    data: Path
    out: Path = Path("runs/quality")
    steps: tuple[int, ...] = ()
    minutes: float = 20.0
    held_out: tuple[str, ...] = TRANSFER_HELD_OUT
    trained: str = TRAINED_SCORED
    scored: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()
    max_anchors: int | None = None
    batches: int = 40
    overrides: list[str] = field(default_factory=list)
    read_only: bool = False


@dataclass(frozen=True)
class Experiment:
    """One experiment of the quality reports (see the module docstring).

    Attributes:
        name: the stem of its files under ``docs/quality/`` and its ``--experiment`` name.
        title: the first line of its report, and its line on docs/quality.md.
        measure: trains, converts and measures; returns the results (plain JSON data).
        render: the whole markdown of the report from the results.
        figure: draws the report's figure from the results into the given path (None: no figure).
    """

    name: str
    title: str
    measure: Callable[[Options], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
    figure: Callable[[dict[str, Any], Path], None] | None = None

    def paths(self, docs: Path = QUALITY_DIR) -> dict[str, Path]:
        """The files this experiment owns under ``docs``: ``json``, ``md`` and (with a figure) ``png``."""
        owned = {"json": docs / f"{self.name}.json", "md": docs / f"{self.name}.md"}
        if self.figure is not None:
            owned["png"] = docs / f"{self.name}.png"
        return owned


def write_report(experiment: Experiment, results: dict[str, Any], docs: Path = QUALITY_DIR) -> list[Path]:
    """Write the experiment's results, report and figure under ``docs`` (each whole); returns the paths."""
    docs.mkdir(parents=True, exist_ok=True)
    paths = experiment.paths(docs)
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["md"].write_text(experiment.render(results))
    if experiment.figure is not None:
        experiment.figure(results, paths["png"])
    return list(paths.values())


def render_again(experiment: Experiment, docs: Path = QUALITY_DIR) -> list[Path]:
    """Rewrite the report (and figure) from the results stored beside it, training and measuring nothing.

    Raises:
        FileNotFoundError: the experiment has no stored results under ``docs``.
    """
    stored = experiment.paths(docs)["json"]
    if not stored.is_file():
        raise FileNotFoundError(f"{stored}: no stored results of {experiment.name}; run the experiment first")
    return write_report(experiment, json.loads(stored.read_text()), docs)


def run_config(overrides: list[str], steps: int, base: str = DEMO_CONFIG) -> Config:
    """The ``base`` config (the demo's by default) for ``steps`` steps: frozen for the first 10%, LoRA to a
    third, then full, each later phase re-warmed over 1% of the steps; evaluation, checkpoints and images
    five times."""
    config = load_config(resolve_path(base), overrides)
    config.train.max_steps = steps
    config.train.phases = [
        PhaseConfig(config.train.phases[0].name, until_step=steps // 10),
        PhaseConfig(config.train.phases[1].name, until_step=steps // 3, rewarmup_steps=steps // 100),
        PhaseConfig(config.train.phases[2].name, rewarmup_steps=steps // 100),
    ]
    schedule = config.train
    schedule.eval_every_steps = schedule.save_every_steps = schedule.image_every_steps = max(1, steps // 5)
    schedule.log_every_steps = max(1, steps // 50)
    return config.validate()


@dataclass
class Run:
    """One trained and exported model of an experiment."""

    name: str
    overrides: list[str]
    steps: int
    minutes: float
    export: Path
    val_loss: float

    def record(self) -> dict[str, Any]:
        """What a measurement records of the run it measured (and what a later run reads back)."""
        return {
            "steps": self.steps,
            "overrides": self.overrides,
            "minutes": self.minutes,
            "val_loss": self.val_loss,
            "code": code_version(),
        }


def train_for(
    name: str, overrides: list[str], steps: int, data_dir: DataSource, work: Path, base: str = DEMO_CONFIG
) -> Run:
    """Train run ``name`` of the ``base`` config from scratch in ``work/name`` (a folder left by an earlier
    run is removed: `train` would resume from its checkpoint), convert it to ``work/name_export`` and record
    it in ``work/name.run.json`` (read back by `trained_run`).

    Raises:
        RuntimeError: training stopped before ``steps`` (a SIGTERM or SIGUSR1 saves a checkpoint and ends
            the run early): nothing is converted, so a half-trained model is never measured as the whole.
    """
    remove_own_folder(work / name, "--out", TRAIN)  # an earlier run of this name, never a user's folder
    started = time.perf_counter()
    result = train(run_config(overrides, steps, base), data_dir, work / name)
    elapsed = (time.perf_counter() - started) / 60
    if result.global_step < steps:
        raise RuntimeError(
            f"{work / name}: training stopped at step {result.global_step} of {steps} (a signal?); nothing "
            "was converted or measured; run the experiment again to train it from scratch"
        )
    export = work / f"{name}_export"
    convert(work / name, export, force=True)
    log.info("%s: %d steps in %.1f minutes", name, steps, elapsed)
    run = Run(name, overrides, steps, elapsed, export, result.val_losses.get("val/loss/total", float("nan")))
    (work / f"{name}.run.json").write_text(json.dumps(run.record(), indent=2) + "\n")
    return run


def trained_run(
    name: str, overrides: list[str], steps: int, data_dir: DataSource, work: Path, base: str = DEMO_CONFIG
) -> Run:
    """The run ``name`` trained before (its export and ``work/name.run.json`` with the same overrides and
    steps: read back, training is deterministic on one machine), or trained now from scratch (`train_for`;
    a run of other overrides or steps in its place is replaced)."""
    export, record = work / f"{name}_export", work / f"{name}.run.json"
    if export.is_dir() and record.is_file():
        known = json.loads(record.read_text())
        if known["overrides"] == overrides and known["steps"] == steps:
            log.info("%s: trained before (%s), read back", name, export)
            return Run(name, overrides, steps, known["minutes"], export, known["val_loss"])
        log.info("%s: trained before with other settings; training it again", name)
    return train_for(name, overrides, steps, data_dir, work, base)


def instrument_folders(root: Path) -> dict[str, Path]:
    """The prepared folders directly under ``root``, each holding one instrument, by instrument.

    Raises:
        ValueError: a folder holds several instruments.
    """
    folders = {}
    for folder in sorted(p for p in Path(root).iterdir() if (p / "manifest.json").is_file()):
        names = load_prepared(folder).instruments
        if len(names) != 1:
            raise ValueError(f"{folder}: holds {names}; these experiments need one instrument per folder")
        folders[names[0]] = folder
    return folders


def training_corpus(
    root: Path, held_out: tuple[str, ...], trained: str
) -> tuple[dict[str, Path], list[Path]]:
    """Every instrument folder under ``root`` by name, and the folders trained on (all but ``held_out``).

    Raises:
        ValueError: a held-out instrument, or ``trained``, has no folder under ``root``.
    """
    folders = instrument_folders(root)
    missing = [name for name in (*held_out, trained) if name not in folders]
    if missing:
        raise ValueError(f"{root}: no prepared folder of {missing} (folders of {sorted(folders)})")
    return folders, [folder for name, folder in folders.items() if name not in held_out]
