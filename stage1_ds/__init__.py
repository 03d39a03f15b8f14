"""stage1_ds: DeepSpeed pretraining of a multi-timeframe Stage-1 encoder for market price series."""

from typing import Any

__version__ = "0.1.0"


def encode(*args: Any, **kwargs: Any) -> Any:
    """Per-timeframe embeddings of a prepared split or raw arrays; see `stage1_ds.encoding.encode`.

    Imported lazily so that ``import stage1_ds`` stays light.
    """
    from stage1_ds.encoding import encode as _encode

    return _encode(*args, **kwargs)
