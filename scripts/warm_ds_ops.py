"""Build DeepSpeed's just-in-time C++ ops once, before the tests (CI runs this in `make test`).

Builds cpu_adam (ZeRO-2 with CPU offload), fused_adam (ZeRO-2 without) and the shared-memory communication
op (every distributed init), each in its own process, side by side (each op is one compiler run on one
core): about a minute cold on 2 cores, seconds when cached. A build that was killed leaves a `lock` file
that makes later loads wait forever, so stale locks are removed first.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BUILDERS = ("CPUAdamBuilder", "FusedAdamBuilder", "ShareMemCommBuilder")


def build(builder: str) -> str:
    """Build (or load from the cache) one op; the line to print."""
    from deepspeed.accelerator import get_accelerator

    start = time.perf_counter()
    get_accelerator().create_op_builder(builder).load(verbose=False)
    return f"{builder}: ready in {time.perf_counter() - start:.1f} s"


def main() -> int:
    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    for lock in cache.rglob("lock") if cache.is_dir() else []:
        print(f"removing stale lock {lock}")
        lock.unlink()
    with ProcessPoolExecutor(max_workers=len(BUILDERS)) as pool:
        for line in pool.map(build, BUILDERS):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
