"""`stage1 probe`: what the encoder knows about the future, against the strongest simple rule.

For anchors of the train, val and test splits (`anchors`), targets come from the 1-minute bars strictly
after the anchor time ``t`` (never inside any window; `stage1_ds.evaluation.volatility`): ``rv_60m`` and
``rv_240m``, the log realised variance over the next 60 / 240 minutes, and ``ret_sign_60m``, the sign of the
next hour's return. The simple rules (`rules`) read the raw bars before ``t``; each is fitted on train
(closed-form ridge; for the sign a ridge classifier on +-1) with its penalty picked on val, and refitted
as time rolls (`fitting`); ``best_rule`` is the one of lowest val MSE per target. The encoder is read
(`readouts`) through its pooled embeddings and, with a future-size head, that head's own forecasts, each
as a correction that nests ``best_rule`` and may decline to correct it; the untrained twin of the same
architecture is read alike, and ``constant`` is the train mean (or the majority class).

Metrics on test (`report`): out-of-sample R^2 (1 - MSE / MSE of the train mean), MSE and QLIKE (on
variances ``exp(log RV)``), with Diebold-Mariano tests (HLN-corrected, Student t) of each method's squared
error against ``best_rule`` (negative: the method's errors are smaller); accuracy and AUC with 95%
intervals for the sign; ``n`` everywhere.
"""

from stage1_ds.evaluation.probe.anchors import (
    LONGEST_MINUTES,
    SPACING_MINUTES,
    InstrumentRules,
    ProbeSet,
    anchor_sets,
    horizon_steps,
    market_bars,
    probe_set,
)
from stage1_ds.evaluation.probe.fitting import Fitted, fit_correction
from stage1_ds.evaluation.probe.measure import ZERO_SHOT_METHODS, probe
from stage1_ds.evaluation.probe.readouts import encoder_columns, readout_methods
from stage1_ds.evaluation.probe.report import format_p, format_probe, method_label, report_data, write_probe
from stage1_ds.evaluation.probe.rules import MARKET_RULES, choose_rule, fixed_rule_of, is_refitted

__all__ = [
    "LONGEST_MINUTES",
    "MARKET_RULES",
    "SPACING_MINUTES",
    "ZERO_SHOT_METHODS",
    "Fitted",
    "InstrumentRules",
    "ProbeSet",
    "anchor_sets",
    "choose_rule",
    "encoder_columns",
    "fit_correction",
    "fixed_rule_of",
    "format_p",
    "format_probe",
    "horizon_steps",
    "is_refitted",
    "market_bars",
    "method_label",
    "probe",
    "probe_set",
    "readout_methods",
    "report_data",
    "write_probe",
]
