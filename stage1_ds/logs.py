"""Plain-English logging on rank 0 only."""

from __future__ import annotations

import logging
import os


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr on rank 0 (``RANK`` unset or 0); other ranks log warnings and errors only."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # DeepSpeed logs its whole config and every op load at INFO; its warnings still show.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
