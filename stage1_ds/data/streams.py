"""Counter-based random numbers: a uniform float per (seed, sample id, stream), the named streams, and the
keyed permutation that orders each epoch's anchors.

Everything random about a sample (which timeframes it keeps, its masking mode, where its masks fall) is a
hash of ``(seed, sample id, stream)``, so a batch is a pure function of its sample ids: the same on any
worker, after any restart, on any rank. Each decision draws from its own range of streams (`Stream`), so
no two decisions ever read the same numbers.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """First stream of each decision; a decision adds its timeframe index and column within its range."""

    KEEP = 0  # + timeframe index: does the sample keep this timeframe
    MODE = 1 << 16  # the sample's masking mode
    SPANS = 2 << 16  # + timeframe * STRIDE + part * COLUMNS + column: span layout in `spans` mode
    TIME = 3 << 16  # + timeframe * STRIDE + part * COLUMNS + column: span layout in `time` mode


#: Streams per timeframe within SPANS and TIME, and columns per part: far more than any window uses.
STRIDE = 1 << 10
COLUMNS = 1 << 9


def uniform_hash(seed: int, ids: np.ndarray, stream: int) -> np.ndarray:
    """Uniform floats in [0, 1) from (seed, id, stream) with the splitmix64 finaliser."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= np.uint64((seed * 1_000_003 + stream * 7919) & 0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def uniform_columns(seed: int, ids: np.ndarray, stream: int, width: int) -> np.ndarray:
    """(B, width) uniforms from the streams ``stream .. stream + width - 1`` (at most `COLUMNS`)."""
    assert width <= COLUMNS, f"{width} columns overflow a part of {COLUMNS} streams"
    if width == 0:
        return np.zeros((len(ids), 0))
    return np.stack([uniform_hash(seed, ids, stream + j) for j in range(width)], axis=1)


#: Rounds of the Feistel network of `permuted` (Luby and Rackoff: four make a pseudo-random permutation).
FEISTEL_ROUNDS = 6
_ROUND_STREAM = 1 << 30  # streams of the round keys, apart from every sample decision's


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 (wrapping)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, keys: np.ndarray, stream: int = _ROUND_STREAM) -> np.ndarray:
    """(FEISTEL_ROUNDS, len(keys)) uint64 round keys, hashes of ``(seed, key, stream + round)``."""
    return np.stack(
        [
            (uniform_hash(seed, np.asarray(keys), stream + r) * float(1 << 53)).astype(np.uint64)
            for r in range(FEISTEL_ROUNDS)
        ]
    )


def permute(positions: np.ndarray, n: np.ndarray, round_keys: np.ndarray) -> np.ndarray:
    """Keyed pseudo-random bijections of ``[0, n)``, one per element, evaluated on demand: element ``k``
    is where the bijection of domain ``n[k]`` keyed by ``round_keys[:, k]`` takes ``positions[k]`` (so
    elements that share ``n`` and keys share one bijection).

    A balanced Feistel network of `FEISTEL_ROUNDS` rounds permutes ``[0, 4^h)`` (``h`` bits a half, the
    fewest with ``4^h >= n``); a value that lands at ``n`` or above is permuted again until it lands below
    (cycle walking: still a bijection of ``[0, n)``; the domain is under ``4n``, so few walks).
    """
    n = np.broadcast_to(np.asarray(n, dtype=np.uint64), np.shape(positions))
    # The bit length of n - 1 (at least 1), exact: frexp's exponent of an integer below 2^53.
    bits = np.frexp(np.maximum(n, np.uint64(2)) - np.uint64(1))[1].astype(np.uint64)
    half = (bits + np.uint64(1)) // np.uint64(2)
    mask = (np.uint64(1) << half) - np.uint64(1)
    keys = np.broadcast_to(round_keys, (FEISTEL_ROUNDS, *np.shape(positions)))

    def network(x: np.ndarray, at: np.ndarray) -> np.ndarray:
        h, m = half[at], mask[at]
        left, right = x >> h, x & m
        for key in keys[:, at]:
            left, right = right, left ^ (_mix(right ^ key) & m)
        return (left << h) | right

    everywhere = np.arange(np.size(positions))
    out = network(np.asarray(positions).astype(np.uint64).reshape(-1), everywhere)
    outside = np.flatnonzero(out >= n.reshape(-1))
    while len(outside):
        out[outside] = network(out[outside], outside)
        outside = outside[out[outside] >= n.reshape(-1)[outside]]
    return out.astype(np.int64).reshape(np.shape(positions))


class EpochPermutation:
    """A keyed pseudo-random bijection of ``[0, n)`` (`permute`), the round keys hashes of ``(seed, epoch,
    round)``: nothing of size ``n`` is built."""

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = n
        self.keys = _round_keys(seed, np.array([epoch]))

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Where the bijection takes each position (int64 values in ``[0, n)``)."""
        return permute(np.asarray(positions), np.asarray(self.n, dtype=np.uint64), self.keys)


def keyed_permute(positions: np.ndarray, n: np.ndarray, seed: int, keys: np.ndarray) -> np.ndarray:
    """`permute` with each element's bijection keyed by ``(seed, keys[k])`` (e.g. an instrument and its
    epoch folded into one integer)."""
    return permute(positions, n, _round_keys(seed, np.asarray(keys)))


_BLOCK_STREAM = 1 << 31  # the keys of `InstrumentMix`'s blocks, apart from the epochs' and every decision's


def block_keys(seed: int, blocks: np.ndarray) -> np.ndarray:
    """Round keys of each block's bijection (hashes of ``(seed, block)`` on streams of their own)."""
    return _round_keys(seed, blocks, _BLOCK_STREAM)
