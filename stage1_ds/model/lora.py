"""LoRA adapters on the shared encoder (peft), and the pure merge of adapters into base weights.

The only module that knows peft's naming: the wrapper's prefix, ``.base_layer`` and the adapter weights.
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from stage1_ds.config import LoraConfig
from stage1_ds.errors import ConfigError
from stage1_ds.model import t5

# peft's naming: the wrapper adds this prefix; an adapted layer keeps its weight under `.base_layer`.
_PEFT_PREFIX = "base_model.model."
_BASE_LAYER = ".base_layer.weight"
_LORA_A, _LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"


def wrap_with_lora(encoder: nn.Module, config: LoraConfig) -> PeftModel:
    """Add LoRA adapters to the encoder's target layers; the base weights are left as they are.

    Raises:
        ConfigError: a target module name matches no linear layer (the message lists the valid names).
    """
    available = t5.lora_target_names(encoder)
    targets = list(config.target_modules or t5.DEFAULT_LORA_TARGETS)
    unknown = [name for name in targets if name not in available]
    if unknown:
        raise ConfigError(f"model.lora.target_modules: {unknown} match no layer; valid names: {available}")
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
    )
    with warnings.catch_warnings():
        # peft asks transformers for `is_gradient_checkpointing`, deprecated in transformers 5.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(encoder, peft_config)


def has_lora(encoder: nn.Module) -> bool:
    return isinstance(encoder, PeftModel)


def base_model(encoder: nn.Module) -> nn.Module:
    """The encoder inside peft's wrapper (its adapted layers carry the adapters), or the encoder itself."""
    return encoder.get_base_model() if isinstance(encoder, PeftModel) else encoder


def merge_lora(encoder: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; return the plain encoder."""
    if not isinstance(encoder, PeftModel):
        return encoder
    return encoder.merge_and_unload()


def lora_scaling(config: LoraConfig) -> float:
    """The factor of the update ``B @ A``: alpha / rank."""
    return config.alpha / config.rank


def adapter_parameters(model: nn.Module) -> frozenset[str]:
    """The names (as ``model.named_parameters()`` gives them) of every LoRA adapter weight: the parameters of
    the adapter sub-layers (``LoraLayer.adapter_layer_names``) of each of peft's LoRA layers in ``model``."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for layer in module.adapter_layer_names:
                prefix = f"{module_name}.{layer}" if module_name else layer
                names |= {f"{prefix}.{name}" for name, _ in getattr(module, layer).named_parameters()}
    return frozenset(names)


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key (a checkpoint's, with no modules to ask) is a LoRA adapter weight, by peft's
    layout of its keys: ``<layer>.lora_A.<adapter>.weight`` and ``<layer>.lora_B.<adapter>.weight``."""
    return ".lora_A." in key or ".lora_B." in key


def plain_name(parameter_name: str) -> str:
    """A parameter's name as it is without peft (the wrapper's prefix and ``.base_layer`` removed)."""
    return parameter_name.replace(_PEFT_PREFIX, "").replace(".base_layer.", ".")


def merge_lora_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A state dict with LoRA adapters folded in: ``W + B @ A * scaling``, keys named as without peft.

    Pure: the input is not modified. Keys without adapters are renamed only (peft's prefix and
    ``.base_layer`` removed).
    """
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((_LORA_A, _LORA_B)):
            continue
        name = plain_name(key)
        if key.endswith(_BASE_LAYER):
            stem = key[: -len(_BASE_LAYER)]
            a, b = state[stem + _LORA_A], state[stem + _LORA_B]
            delta = (b.double() @ a.double()) * scaling
            value = (value.double() + delta).to(value.dtype)
        merged[name] = value
    return merged
