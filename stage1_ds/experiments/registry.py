"""Every experiment of the quality reports, by name: `scripts/quality_report.py --experiment NAME` runs one.

Adding an experiment is one module beside this one that defines an `Experiment` (a measure and a render
function) and its line here.
"""

from __future__ import annotations

from stage1_ds.experiments import context, ladder, main, market, stage2, transfer, variants
from stage1_ds.experiments.harness import Experiment

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        main.EXPERIMENT,
        variants.TIME,
        variants.SIGNAL,
        transfer.EXPERIMENT,
        ladder.EXPERIMENT,
        market.EXPERIMENT,
        context.EXPERIMENT,
        stage2.EXPERIMENT,
    )
}
