"""No code runs from a checkpoint: its pickles are read for what they import before anything unpickles them.

A pickle can import and call any function (``os.system`` included) while it is loaded, so a checkpoint
folder someone hands you is code. DeepSpeed's loaders (``engine.load_checkpoint``, the fp32 conversion)
unpickle its ``*.pt`` files with ``torch.load(weights_only=False)``; before either runs, `check_folder`
walks every pickle of the checkpoint with `pickletools` (which only decodes, never executes) and refuses
any global outside `ALLOWED`: the tensor, storage, numpy and container types, and the few DeepSpeed and
project classes a checkpoint of this project holds (measured on real checkpoints of every phase, with and
without offload, on one and two ranks). The project's own files (each rank's random state) are loaded with
``torch.load(weights_only=True)`` and the same list (`safe_load`). Checkpoints this project wrote are
trusted because they pass this check, not because of where they are; docs/training.md says so.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from stage1_ds.errors import CheckpointError

_TORCH_STORAGES = (
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
)
#: The globals a checkpoint's pickles may import: (module, name).
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("_codecs", "encode"),  # how numpy's arrays pickle their bytes
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "Size"),
        ("torch", "device"),
        *(("torch", storage) for storage in _TORCH_STORAGES),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.dtypes", "UInt32DType"),
        ("numpy.dtypes", "Float64DType"),
        ("numpy.dtypes", "Int64DType"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
        ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
        ("deepspeed.utils.tensor_fragment", "fragment_address"),
        ("stage1_ds.config", "Phase"),
    }
)
_STRINGS = (
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
)


_MEMO_PUTS = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")
_MEMO_GETS = ("GET", "BINGET", "LONG_BINGET")
_UNKNOWN = ("?", "a global whose name is not a string pushed just before it")


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """The (module, name) pairs a pickle imports, read without unpickling it.

    ``STACK_GLOBAL`` takes the top two items of the stack, which every pickler since protocol 4 pushes just
    before it: each a string, or a string fetched back from the memo. Anything else there (a pop, a call, a
    memo entry that holds no string) is reported as `_UNKNOWN`, never guessed, so an import cannot hide
    behind earlier strings. Extension codes (``EXT1`` ...) import by a registry number and are unknown too.
    """
    found: set[tuple[str, str]] = set()
    pushed: list[str | None] = []  # what each operation left on top: a string, or None (anything else)
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        name = opcode.name
        if name in _MEMO_PUTS:  # stores the top of the stack, pushes nothing
            memo[len(memo) if arg is None else int(arg)] = pushed[-1] if pushed else None  # MEMOIZE: no arg
            continue
        if name in ("GLOBAL", "INST"):
            module, attribute = str(arg).split(" ", 1)
            found.add((module, attribute))
        elif name == "STACK_GLOBAL":
            module_name = pushed[-2:]
            if len(module_name) == 2 and None not in module_name:
                found.add((str(module_name[0]), str(module_name[1])))
            else:
                found.add(_UNKNOWN)
        elif name.startswith("EXT"):
            found.add(_UNKNOWN)
        if name in _STRINGS:
            pushed.append(str(arg))
        else:
            pushed.append(memo.get(int(arg)) if name in _MEMO_GETS and arg is not None else None)
    return found


def file_globals(path: Path) -> set[tuple[str, str]]:
    """The globals of every pickle in a ``torch.save`` file (a zip of ``*.pkl`` records, or a plain pickle).

    Raises:
        CheckpointError: a file no pickle reader can decode.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                records = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        else:
            records = [path.read_bytes()]
        return set().union(*(pickle_globals(record) for record in records))
    except (ValueError, zipfile.BadZipFile, OSError, IndexError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint file ({error})") from None


def check_folder(folder: Path) -> None:
    """Refuse a checkpoint folder any of whose ``*.pt`` files would import a global outside `ALLOWED`.

    Raises:
        CheckpointError: naming the file and every global refused.
    """
    for path in sorted(Path(folder).rglob("*.pt")):
        refused = sorted(file_globals(path) - ALLOWED)
        if refused:
            names = ", ".join(f"{module}.{name}" for module, name in refused)
            raise CheckpointError(
                f"{path}: loading it would run code outside what a checkpoint holds ({names}); refused. A "
                "checkpoint holds tensors, arrays and a few DeepSpeed records: this file was written by "
                "something else (or altered). Use checkpoints you trust, written by stage1 train"
            )


def _importable(module: str, name: str) -> Any:
    """The allowed object itself, for ``torch.serialization``'s allow-list (None where it does not exist
    in this environment: another numpy, say)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a file of this project, with `ALLOWED` as its allow-list.

    Raises:
        CheckpointError: the file imports something outside the list (named).
    """
    allowed = [obj for module, name in ALLOWED if callable(obj := _importable(module, name))]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, weights_only=True)
    except Exception as error:  # torch raises UnpicklingError (and others) naming the global it refused
        raise CheckpointError(f"{path}: refused by the weights-only loader: {error}") from None
