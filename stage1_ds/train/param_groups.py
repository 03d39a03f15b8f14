"""Named parameter groups with their own learning rates, handed to DeepSpeed as the optimizer's groups.

Every parameter lands in exactly one named group: ``stems`` (stems and embeddings), ``heads``, ``lora``,
``encoder_block_XX`` (one per T5 block, layer-wise decay from the top block down), ``encoder_other`` (the
final layer norm and T5's relative position bias, which every block uses: the top block's lr).
Norms, biases and embeddings take no weight decay; they go to the same group name with ``/no_decay``.
Frozen parameters are classified too (and asserted) but not passed to the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from stage1_ds.config import OptimizerConfig
from stage1_ds.model import t5
from stage1_ds.model.lora import adapter_parameters, plain_name
from stage1_ds.model.stage1 import ENCODER_PREFIX, is_token_embedding

STEMS, HEADS, LORA, ENCODER_OTHER = "stems", "heads", "lora", "encoder_other"


@dataclass
class ParamGroup:
    name: str
    lr: float
    weight_decay: float
    names: list[str] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def to_optimizer_group(self) -> dict:
        return {"params": self.params, "lr": self.lr, "weight_decay": self.weight_decay, "name": self.name}


def group_name(parameter_name: str, adapters: frozenset[str] = frozenset()) -> str | None:
    """The named group of a Stage1Model parameter; None for the unused token embedding. ``adapters``: the
    model's LoRA adapter weights (`adapter_parameters`)."""
    if parameter_name.startswith("embed."):
        return STEMS
    if parameter_name.startswith("heads."):
        return HEADS
    if is_token_embedding(parameter_name):
        return None
    if parameter_name in adapters:
        return LORA
    block = t5.block_index(plain_name(parameter_name.removeprefix(ENCODER_PREFIX)))
    return ENCODER_OTHER if block is None else f"encoder_block_{block:02d}"


def takes_weight_decay(parameter_name: str, parameter: nn.Parameter) -> bool:
    """Weight matrices decay; norms, biases and embeddings (1-D, or named as such) do not."""
    if parameter.dim() < 2 or parameter_name.endswith(".bias"):
        return False
    if parameter_name.startswith("embed.") and not parameter_name.startswith("embed.stems."):
        return False  # timeframe, position and mask embeddings
    return not t5.NO_DECAY_PATTERN.search(parameter_name)


def base_lr(name: str, config: OptimizerConfig, num_blocks: int) -> float:
    if name == STEMS:
        return config.lr_stems
    if name == HEADS:
        return config.lr_heads
    if name == LORA:
        return config.lr_lora
    if name == ENCODER_OTHER:
        return config.lr_encoder_top
    block = int(name.removeprefix("encoder_block_"))
    return config.lr_encoder_top * config.layer_decay ** (num_blocks - 1 - block)


def build_param_groups(model: nn.Module, config: OptimizerConfig, num_blocks: int) -> list[ParamGroup]:
    """Trainable parameters in named groups (empty groups left out), in a stable order.

    Raises:
        AssertionError: a parameter would land in no group or in two.
    """
    groups: dict[str, ParamGroup] = {}
    seen: set[int] = set()
    adapters = adapter_parameters(model)
    for name, param in model.named_parameters():
        assert id(param) not in seen, f"parameter {name} appears twice"
        seen.add(id(param))
        base = group_name(name, adapters)
        if base is None or not param.requires_grad:
            continue
        decay = takes_weight_decay(name, param)
        key = base if decay else f"{base}/no_decay"
        if key not in groups:
            groups[key] = ParamGroup(
                name=key,
                lr=base_lr(base, config, num_blocks),
                weight_decay=config.weight_decay if decay else 0.0,
            )
        groups[key].names.append(name)
        groups[key].params.append(param)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in groups.values() for p in g.params]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == trainable, "a trainable parameter is in no group"
    return list(groups.values())


def format_group_table(groups: list[ParamGroup]) -> str:
    lines = [f"{'group':<28}{'tensors':>8}{'parameters':>14}{'lr':>11}{'weight decay':>14}"]
    for g in groups:
        lines.append(f"{g.name:<28}{len(g.params):>8}{g.numel:>14,}{g.lr:>11.2e}{g.weight_decay:>14.3g}")
    return "\n".join(lines)
