"""The Stage-1 model: stems, one shared T5 encoder, heads, masking and losses."""
