"""Data: ingest raw 1-minute bars, derive every timeframe, store them, and serve aligned windows."""
