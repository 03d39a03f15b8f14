"""stage1_ds: DeepSpeed pretraining of a multi-timeframe Stage-1 encoder for market price series."""

__version__ = "0.1.0"
