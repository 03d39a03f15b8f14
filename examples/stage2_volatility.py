"""A Stage-2 model on the encoder, trained end to end from the rule: next-hour realised variance.

    python examples/stage2_volatility.py --model exports/eurusd --data data/eurusd --json stage2.json

On your own prepared folder (its train, val and test splits; the model's export): the model starts at the
strongest simple rule (its forecast an offset), adds a zero-initialised head on the encoder's pooled
embeddings (and its future-size forecasts, for a model with that head), and is fine-tuned in stages (the
head, then LoRA on the encoder, then every encoder weight), each early-stopped on val; it is scored on test
against the rule and the frozen readouts `stage1 probe` fits (`stage1_ds.finetune`, which this calls).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from stage1_ds.finetune import Settings, fine_tune, format_table
from stage1_ds.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an export folder (stage1 convert)")
    parser.add_argument("--data", type=Path, required=True, help="a prepared folder with train, val and test")
    parser.add_argument("--json", type=Path, help="write the report here")
    for field in fields(
        Settings
    ):  # --target, --max-anchors, --head-epochs, --lora-lr, ... (Settings' defaults)
        kind = type(field.default) if field.default is not None else int
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=field.default)
    args = parser.parse_args(argv)
    setup_logging()
    settings = Settings(**{f.name: getattr(args, f.name) for f in fields(Settings)})
    report = fine_tune(args.model, args.data, settings)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
