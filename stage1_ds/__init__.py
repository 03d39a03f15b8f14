"""stage1_ds: DeepSpeed pretraining of a multi-timeframe Stage-1 encoder for market price series."""

from typing import Any

from stage1_ds.version import __version__

__all__ = ["Encoder", "__version__", "encode"]


def __getattr__(name: str) -> Any:
    """``stage1_ds.encode`` is `stage1_ds.encoding.encode` and ``stage1_ds.Encoder`` is
    `stage1_ds.encoder.Encoder`, imported on first use so that ``import stage1_ds`` stays light (no torch)."""
    if name == "encode":
        from stage1_ds.encoding import encode

        return encode
    if name == "Encoder":
        from stage1_ds.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'stage1_ds' has no attribute {name!r}")
