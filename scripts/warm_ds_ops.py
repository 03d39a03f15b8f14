"""Build DeepSpeed's just-in-time C++ ops once, before the tests (CI runs this in `make test`).

Builds cpu_adam (ZeRO-2 with CPU offload), fused_adam (ZeRO-2 without) and the shared-memory communication
op (every distributed init), one after another: about 110 s cold on 2 cores, seconds when cached (built
side by side they took longer: 152 s, each build's compiler runs in parallel already). `make test` runs this
beside ruff and mypy. A build that was killed leaves a `lock` file that makes later loads wait forever, so
stale locks are removed first.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from deepspeed.accelerator import get_accelerator


def main() -> int:
    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    for lock in cache.rglob("lock") if cache.is_dir() else []:
        print(f"removing stale lock {lock}")
        lock.unlink()
    accelerator = get_accelerator()
    for builder in ("CPUAdamBuilder", "FusedAdamBuilder", "ShareMemCommBuilder"):
        start = time.perf_counter()
        accelerator.create_op_builder(builder).load(verbose=False)
        print(f"{builder}: ready in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
