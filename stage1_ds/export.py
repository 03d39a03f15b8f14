"""`stage1 convert`: a ZeRO-2 checkpoint (any number of ranks, any phase, fp32 or bf16) to one fp32 model.

DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint` consolidates the optimizer partitions; this
module then folds LoRA adapters into the base weights (`merge_lora_state_dict`), keeps one copy of the
tied token embedding (safetensors refuses shared tensors; `Stage1Model.from_pretrained` restores the
alias), casts every tensor to fp32, checks that the result loads strictly into the model the checkpoint's
config describes, and writes the export folder:

    model.safetensors    fp32 weights
    config.yaml          the run's config
    encoder_config.json  the exact T5 layout
    stats.json           the data statistics (feature scales) the model was trained with
    data.json            the data it was trained on: preparation options, instruments, ranges, sources
    README.md            the model card (`stage1_ds.card`)
    export_info.json     source run, tag, phase, step, code version, parameter counts
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import save_file

from stage1_ds.card import write_card
from stage1_ds.config import Config, config_to_dict
from stage1_ds.errors import CheckpointError
from stage1_ds.model import t5
from stage1_ds.model.lora import is_adapter_key, lora_scaling, merge_lora_state_dict
from stage1_ds.model.stage1 import (
    ENCODER_PREFIX,
    EXPORT_CONFIG,
    EXPORT_DATA,
    EXPORT_ENCODER_CONFIG,
    EXPORT_INFO,
    EXPORT_STATS,
    EXPORT_WEIGHTS,
    FINGERPRINT_KEY,
    RUN_FINGERPRINT,
    Stage1Model,
    parameter_report,
)
from stage1_ds.outputs import made_by, make_readable, mark_folder, remove_own_folder, replace_own_files
from stage1_ds.train.checkpoint import checkpoint_dir, config_of, read_meta
from stage1_ds.train.pickles import check_folder
from stage1_ds.version import code_version


def consolidate(run_dir: Path, tag: str, config: Config) -> dict[str, torch.Tensor]:
    """The checkpoint as one fp32 state dict named like a plain `Stage1Model` (adapters merged)."""
    folder = checkpoint_dir(run_dir) / tag
    if not (folder / "mp_rank_00_model_states.pt").is_file() or not any(folder.glob("*optim_states.pt")):
        raise CheckpointError(
            f"{folder}: DeepSpeed's model or optimizer states are missing (a half-written checkpoint?)"
        )
    check_folder(folder)  # before DeepSpeed unpickles anything of it
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{folder}: DeepSpeed could not consolidate this checkpoint: {error}") from None
    state = {name: tensor.float() for name, tensor in state.items()}
    if any(is_adapter_key(name) for name in state):
        state = merge_lora_state_dict(state, lora_scaling(config.model.lora))
    return t5.untie(state, ENCODER_PREFIX)


#: The command whose mark (`stage1_ds.outputs.MARK`) an export folder carries.
CONVERT = "stage1 convert"


def convert(
    run_dir: Path,
    out: Path,
    tag: str | None = None,
    force: bool = False,
    card_metrics: list[Path] | None = None,
) -> dict[str, Any]:
    """Write the export folder of ``run_dir``'s checkpoint ``tag`` (default: latest), with its model card
    (`stage1_ds.card`; ``card_metrics``: evaluate and probe reports to show in it).

    Returns:
        The export info written to export_info.json.

    Raises:
        CheckpointError: no such checkpoint, an incomplete one, one from another model, or ``out`` exists
            and ``force`` is not set.
    """
    replacing = out.exists() and any(out.iterdir())
    if replacing and not force:
        raise CheckpointError(f"{out}: already exists; pass --force to overwrite it")
    if replacing and made_by(out) != CONVERT:
        replace_own_files(out, "--out", CONVERT)  # refuses a folder stage1 convert did not make
    staging = out.with_name(out.name + ".partial")
    remove_own_folder(staging, "--out", CONVERT)  # an interrupted export's, never a user's
    tag, meta = read_meta(run_dir, tag)
    for name in (EXPORT_ENCODER_CONFIG, EXPORT_STATS):
        if not (run_dir / name).is_file():
            raise CheckpointError(f"{run_dir / name}: missing; is {run_dir} a stage1 run folder?")
    config = config_of(meta)
    state = consolidate(run_dir, tag, config)
    model = Stage1Model(config.model, config.data, layout=t5.read_layout(run_dir / EXPORT_ENCODER_CONFIG))
    try:
        model.load_state_dict(t5.retie(state, ENCODER_PREFIX), strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint_dir(run_dir) / tag}: its weights do not fit the model its config describes "
            f"(a checkpoint of another model?): {str(error)[:500]}"
        ) from None
    report = parameter_report(model)
    info = {
        "source_run": str(run_dir.resolve()),
        "tag": tag,
        "phase": meta["phase"],
        "global_step": meta["global_step"],
        "trained_world_size": meta["world_size"],
        "trained_code_version": meta["code_version"],
        "code_version": code_version(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lora_merged": any(is_adapter_key(name) for name in meta["parameter_shapes"]),
        # Micro batches are counted per rank in the checkpoint's world size (a resume on another number of
        # ranks converts the count), so their product is every window the model was trained on.
        "windows_seen": {
            "windows": meta["batches_consumed"] * meta["world_size"] * config.train.micro_batch_size,
            "micro_batches_per_rank": meta["batches_consumed"],
            "micro_batch_size": config.train.micro_batch_size,
            "world_size": meta["world_size"],
        },
        "parameters": {k: v["total"] for k, v in report.items()},
        "dtype": "float32",
    }
    staging.mkdir(parents=True)
    mark_folder(staging, CONVERT, [])
    # The fingerprint of the data trained on travels inside the weights: a copied model file keeps it.
    known = run_dir / RUN_FINGERPRINT
    metadata = {FINGERPRINT_KEY: known.read_text()} if known.is_file() else None
    save_file({k: v.contiguous() for k, v in state.items()}, str(staging / EXPORT_WEIGHTS), metadata=metadata)
    (staging / EXPORT_CONFIG).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    shutil.copyfile(run_dir / EXPORT_ENCODER_CONFIG, staging / EXPORT_ENCODER_CONFIG)
    shutil.copyfile(run_dir / EXPORT_STATS, staging / EXPORT_STATS)
    if (run_dir / EXPORT_DATA).is_file():  # runs before data.json existed convert without it
        shutil.copyfile(run_dir / EXPORT_DATA, staging / EXPORT_DATA)
    (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    write_card(staging, card_metrics, name=out.name, location=out)
    mark_folder(staging, CONVERT)
    make_readable(staging)
    if replacing:  # its own files replaced, the user's (reports, notes) kept
        replace_own_files(out, "--out", CONVERT)
        for path in staging.iterdir():
            path.replace(out / path.name)
        staging.rmdir()
    else:
        staging.rename(out)  # the export appears whole or not at all
    return info
