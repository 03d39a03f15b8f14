"""Everything this project knows about T5's internals, in one place.

Presets, loading from a local folder, the layout file of runs and exports, the block list, projection
names, default LoRA targets, and which weights are the unused token embedding (and its tied alias).
Parameter grouping, LoRA, unfreezing and conversion ask this module instead of probing the model.
Parameter names given to it are plain: as without peft's wrapper (`stage1_ds.model.lora.plain_name`).

The token embedding: the encoder is always fed ``inputs_embeds``, so T5's 32128-row token embedding is
never used. After building or loading, it is replaced by a single frozen row (`drop_token_embedding`):
it costs no memory, never trains, is not counted as capacity, and a pretrained folder's token embedding
is discarded on load.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file
from torch import nn
from transformers import PretrainedConfig, T5Config, T5EncoderModel

from stage1_ds.config import EncoderConfig, EncoderPreset
from stage1_ds.errors import ConfigError

#: An exact T5 encoder layout (what ``encoder_config.json`` of a run or export holds).
Layout = T5Config

#: d_model, d_ff, num_layers, num_heads, d_kv. t5-small/base/large are the published layouts.
PRESET_LAYOUTS: dict[EncoderPreset, tuple[int, int, int, int, int]] = {
    EncoderPreset.TINY: (32, 64, 2, 2, 16),
    EncoderPreset.MINI: (128, 512, 4, 4, 32),
    EncoderPreset.T5_SMALL: (512, 2048, 6, 8, 64),
    EncoderPreset.T5_BASE: (768, 3072, 12, 12, 64),
    EncoderPreset.T5_LARGE: (1024, 4096, 24, 16, 64),
}
PUBLISHED_VOCAB_SIZE = 32128
#: The weight files of a model in the Hugging Face cache, single or sharded.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

#: Parameter-name prefix of the encoder's blocks inside `T5EncoderModel`; the index follows it.
_BLOCK_PATTERN = re.compile(r"(?:^|\.)encoder\.block\.(\d+)\.")
#: Linear layers of a T5 block: self-attention, then the feed-forward (``wi_0``/``wi_1`` when gated).
ATTENTION_PROJECTIONS = ("q", "k", "v", "o")
FEED_FORWARD_PROJECTIONS = ("wi", "wi_0", "wi_1", "wo")
#: LoRA targets when ``model.lora.target_modules`` is not set: the query and value projections.
DEFAULT_LORA_TARGETS = ("q", "v")
#: The token embedding: ``shared`` and its alias ``encoder.embed_tokens`` (tied; one tensor).
TOKEN_EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight")
TOKEN_EMBEDDING, TOKEN_EMBEDDING_ALIAS = TOKEN_EMBEDDING_NAMES
#: The relative position bias: T5 keeps one table in block 0 and every block adds it to its attention.
_SHARED_BY_BLOCKS = re.compile(r"relative_attention_bias")
#: Weights that take no weight decay: layer norms (T5 has no biases) and the relative position bias.
NO_DECAY_PATTERN = re.compile(r"layer_norm|relative_attention_bias")


def preset_config(preset: EncoderPreset, dropout: float = 0.1) -> T5Config:
    d_model, d_ff, layers, heads, d_kv = PRESET_LAYOUTS[preset]
    return T5Config(
        d_model=d_model,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        d_kv=d_kv,
        vocab_size=PUBLISHED_VOCAB_SIZE,
        feed_forward_proj="relu",
        dropout_rate=dropout,
        is_encoder_decoder=False,
        use_cache=False,
    )


def build_encoder(config: EncoderConfig, layout: Layout | None = None) -> T5EncoderModel:
    """Random init from the preset, or pretrained weights (`load_pretrained_encoder`); with ``layout`` (an
    export's own T5 config), random init of exactly that layout, whatever the preset or weights say.

    Raises:
        ConfigError: the pretrained weights cannot be found or are not a T5 encoder's.
    """
    if layout is not None:
        encoder = T5EncoderModel(layout)
    elif config.pretrained is None:
        encoder = T5EncoderModel(preset_config(config.preset, config.dropout))
    else:
        encoder = load_pretrained_encoder(config)
    drop_token_embedding(encoder)
    return encoder


def load_pretrained_encoder(config: EncoderConfig) -> T5EncoderModel:
    """``model.encoder.pretrained``: a local folder when it exists, a ``.safetensors`` file, else a model
    id resolved by transformers through its cache (``HF_HOME``; ``HF_HUB_OFFLINE=1`` never downloads)."""
    source = str(config.pretrained)
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        return _load_prefixed_file(path, config)
    if path.is_dir():
        return _load_folder(path, config.dropout)
    if path.is_absolute() or source.startswith((".", "~")) or path.exists():
        raise ConfigError(
            f"model.encoder.pretrained: {source} is not a folder (expected save_pretrained output)"
        )
    return _load_model_id(source, config.dropout)


def find_pretrained(config: EncoderConfig) -> tuple[bool, str]:
    """Whether ``model.encoder.pretrained`` loads here without a download, and where it is (or what is
    missing): a local folder with ``config.json`` and weights, a ``.safetensors`` file, or a model id whose
    config and weights are in transformers' cache (``HF_HOME``). Reads no weights."""
    if config.pretrained is None:
        return True, "random init: no weights to load"
    source = str(config.pretrained)
    path = Path(source).expanduser()
    if path.suffix == ".safetensors":
        return path.is_file(), f"{path} {'found' if path.is_file() else 'missing'}"
    if path.is_dir():
        weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        found = (path / "config.json").is_file() and weights
        return found, f"{path}: {'config and weights found' if found else 'no config.json or no weights'}"
    if path.is_absolute() or source.startswith((".", "~")):
        return False, f"{path}: no such folder"
    config_file = try_to_load_from_cache(source, "config.json")
    weight_files = [try_to_load_from_cache(source, name) for name in _WEIGHT_FILES]
    found = isinstance(config_file, str) and any(isinstance(w, str) for w in weight_files)
    where = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return found, f"model id {source!r} {'in' if found else 'not in'} the Hugging Face cache ({where})"


def _load_folder(path: Path, dropout: float) -> T5EncoderModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model.encoder.pretrained: {path} has no config.json; is it a T5 checkpoint?")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "t5":
        raise ConfigError(
            f"model.encoder.pretrained: {config_file} has model_type {model_type!r}, expected 't5'"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ConfigError(f"model.encoder.pretrained: {path} holds no weights (*.safetensors or *.bin)")
    return T5EncoderModel.from_pretrained(path, local_files_only=True, dropout_rate=dropout)


def _load_model_id(model_id: str, dropout: float) -> T5EncoderModel:
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(model_id)
    except OSError as error:
        reason = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"model.encoder.pretrained: {model_id!r} is neither a local folder nor a model in the Hugging Face "
            f"cache ({reason}); download it once (huggingface-cli download {model_id}) or point HF_HOME at "
            "the cache that holds it"
        ) from None
    if config_dict.get("model_type") != "t5":
        raise ConfigError(
            f"model.encoder.pretrained: {model_id!r} has model_type {config_dict.get('model_type')!r}, expected 't5'"
        )
    return T5EncoderModel.from_pretrained(model_id, dropout_rate=dropout)


def _load_prefixed_file(path: Path, config: EncoderConfig) -> T5EncoderModel:
    """A T5 encoder stack whose weights sit under ``config.pretrained_prefix`` in a safetensors file."""
    if not path.is_file():
        raise ConfigError(f"model.encoder.pretrained: {path}: no such file")
    state = load_file(str(path))
    prefix = config.pretrained_prefix or ""
    taken = {f"encoder.{k[len(prefix) :]}": v for k, v in state.items() if k.startswith(prefix)}
    beside = path.parent / "config.json"
    if beside.is_file() and json.loads(beside.read_text()).get("model_type") == "t5":
        layout = T5Config.from_json_file(beside)
        layout.dropout_rate = config.dropout
    else:
        layout = preset_config(config.preset, config.dropout)
    encoder = T5EncoderModel(layout)
    expected = {
        k: v.shape
        for k, v in encoder.state_dict().items()
        if k.startswith("encoder.") and not is_token_embedding(k)
    }
    missing = sorted(set(expected) - set(taken))
    wrong = sorted(k for k in expected if k in taken and taken[k].shape != expected[k])
    if missing or wrong:
        found = sorted(state)[:4]
        raise ConfigError(
            f"model.encoder.pretrained: {path} under prefix {prefix!r} lacks {len(missing)} of the encoder's "
            f"{len(expected)} weights (e.g. {missing[:3]}) and has {len(wrong)} of another shape (e.g. {wrong[:3]}); "
            f"its keys begin like {found}: set model.encoder.pretrained_prefix, or the preset, to match"
        )
    encoder.load_state_dict({k: taken[k] for k in expected}, strict=False)
    return encoder


def drop_token_embedding(encoder: T5EncoderModel) -> None:
    """Replace the unused token embedding with one frozen row (inputs always come as ``inputs_embeds``)."""
    embedding = nn.Embedding(1, encoder.config.d_model, device=encoder.shared.weight.device)
    embedding.weight.requires_grad_(False)
    encoder.set_input_embeddings(embedding)
    encoder.config.vocab_size = 1
    encoder.config.eos_token_id = None  # token ids mean nothing without the vocabulary


def encoder_config(encoder: nn.Module) -> Layout:
    """The T5 config of an encoder (plain or wrapped by peft, which forwards ``config``)."""
    config = encoder.config
    assert isinstance(config, T5Config)
    return config


def write_layout(encoder: nn.Module, path: Path) -> None:
    """Save the encoder's exact layout as JSON (``encoder_config.json`` of runs and exports)."""
    path.write_text(json.dumps(encoder_config(encoder).to_dict(), indent=2) + "\n")


def read_layout(path: Path) -> Layout:
    """The layout saved by `write_layout`."""
    return T5Config.from_dict(json.loads(path.read_text()))


def d_model(encoder: nn.Module) -> int:
    return int(encoder_config(encoder).d_model)


def num_blocks(encoder: nn.Module) -> int:
    return int(encoder_config(encoder).num_layers)


def block_index(parameter_name: str) -> int | None:
    """The T5 block whose layer-decayed learning rate a parameter takes, from its plain name; None outside
    the blocks (the final layer norm) and for the relative position bias, which sits in block 0 but is used
    by every block (so it must not take block 0's, the lowest, learning rate)."""
    if _SHARED_BY_BLOCKS.search(parameter_name):
        return None
    match = _BLOCK_PATTERN.search(parameter_name)
    return int(match.group(1)) if match else None


def is_token_embedding(parameter_name: str) -> bool:
    """Whether a plain encoder parameter name is the unused token embedding or its alias."""
    return parameter_name in TOKEN_EMBEDDING_NAMES


def untie(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The state dict without the token embedding's tied alias (safetensors refuses shared tensors).
    ``prefix`` is where the encoder sits in the state dict (``"encoder."`` in a Stage1Model)."""
    return {k: v for k, v in state.items() if k != prefix + TOKEN_EMBEDDING_ALIAS}


def retie(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The state dict with the alias restored, so that it loads strictly; the inverse of `untie`."""
    return {**state, prefix + TOKEN_EMBEDDING_ALIAS: state[prefix + TOKEN_EMBEDDING]}


def lora_target_names(encoder: nn.Module) -> list[str]:
    """Names of the encoder's linear layers, the valid LoRA targets: the attention projections and the
    feed-forward's (``wi_0`` and ``wi_1`` in the gated variants, else ``wi``; then ``wo``)."""
    gated = encoder_config(encoder).is_gated_act
    feed_forward = [
        name for name in FEED_FORWARD_PROJECTIONS if name.startswith("wi_") == gated or name == "wo"
    ]
    return sorted([*ATTENTION_PROJECTIONS, *feed_forward])


def num_heads(encoder: nn.Module) -> int:
    return int(encoder_config(encoder).num_heads)


def is_index_bias(parameter_name: str) -> bool:
    """Whether a plain encoder parameter name is T5's relative position bias (over sequence indices)."""
    return bool(_SHARED_BY_BLOCKS.search(parameter_name))


def run_encoder(
    encoder: nn.Module,
    embeddings: torch.Tensor,
    attention_mask: torch.Tensor,
    position_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the encoder on embeddings.

    Args:
        encoder: a `T5EncoderModel` (the model inside peft's wrapper when adapters are on: peft adapts the
            layers in place).
        embeddings: (B, T, d_model).
        attention_mask: (B, T) 1 for tokens to attend to, 0 for padding.
        position_bias: (B, heads, T, T) an attention bias to use in every layer instead of T5's relative
            position bias over indices (None: T5's own). T5's blocks take it as they take the bias their
            first block computes, and add it to the attention scores; padding is added to it here.

    Returns:
        (B, T, d_model) last hidden states.
    """
    if position_bias is None:
        return encoder(inputs_embeds=embeddings, attention_mask=attention_mask).last_hidden_state
    assert isinstance(encoder, T5EncoderModel), "the T5 model itself, not a wrapper"
    stack = encoder.encoder
    dtype = embeddings.dtype
    padding = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # (B, 1, 1, T)
    bias = position_bias.to(dtype) + padding
    hidden = stack.dropout(embeddings)
    for block in stack.block:  # what T5Stack.forward does, with our bias in place of its own
        hidden = block(hidden, attention_mask=None, position_bias=bias)[0]
    return stack.dropout(stack.final_layer_norm(hidden))
