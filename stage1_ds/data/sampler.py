"""Which samples each rank serves, in which order: the resumable sharded sampler, the instrument mix of a
corpus, and the DataLoader that serves the batches (`stage1_ds.data.windows` assembles each one)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stage1_ds.config import DataConfig, InstrumentSampling
from stage1_ds.data.streams import EpochPermutation, block_keys, keyed_permute, permute
from stage1_ds.errors import DataError

log = logging.getLogger(__name__)

#: Added to the RMS range (feature units) before the log: finite on flat bars, as the range loss's floor.
FUTURE_FLOOR = 0.05


class WindowSampler(Sampler[list[int]]):
    """Batches of sample ids, deterministic given the seed, sharded over ranks, resumable by position, in
    memory that does not grow with the number of anchors.

    Samples form one stream of positions across epochs: position ``P`` is anchor ``perm_e(P mod N)`` of
    epoch ``e = P div N``, where ``perm_e`` is a keyed pseudo-random bijection of the ``N`` anchors
    (`stage1_ds.data.streams.EpochPermutation`, evaluated on demand); its sample id is ``e * N`` plus that
    anchor. Batch ``b`` of all ``w`` ranks covers positions ``b w B .. (b + 1) w B - 1`` and rank ``r``
    takes every ``w``-th of them from ``r``: ranks are disjoint, every anchor comes exactly once per epoch
    across ranks, and batch ``b`` is a pure function of ``(seed, rank, world_size, b)``. Resuming means
    starting at the number of batches consumed; on another number of ranks, at the same number of samples.

    Args:
        num_anchors: ``len(dataset)``.
        batch_size: samples per batch on this rank.
        seed: permutation seed.
        rank, world_size: this rank's share.
        start_batch: the first batch to yield (the resume position).
        num_batches: how many batches to yield; None for an endless stream.
        mix: share the positions out among instruments by weight instead of by anchors
            (`InstrumentMix`); None: every anchor once per epoch as above.
    """

    def __init__(
        self,
        num_anchors: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        num_batches: int | None = None,
        mix: InstrumentMix | None = None,
    ):
        self.mix = mix
        self.num_anchors = num_anchors
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.num_batches = num_batches
        #: Whole batches of every rank in one epoch (the stream itself runs across epochs).
        self.batches_per_epoch = num_anchors // world_size // batch_size
        if self.batches_per_epoch < 1:
            raise DataError(
                f"{num_anchors} anchors cannot fill one batch of {batch_size} on each of {world_size} ranks; "
                "lower the batch size or use more data"
            )
        self._permutations: dict[int, EpochPermutation] = {}

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless WindowSampler has no length")
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start_batch
        while self.num_batches is None or b < self.start_batch + self.num_batches:
            yield self.batch_ids(b).tolist()
            b += 1

    def batch_ids(self, b: int) -> np.ndarray:
        """Sample ids of batch ``b`` of this rank."""
        first = b * self.world_size * self.batch_size + self.rank
        positions = first + self.world_size * np.arange(self.batch_size, dtype=np.int64)
        if self.mix is not None:
            return self.mix.sample_ids(positions)
        epoch, position = np.divmod(positions, self.num_anchors)
        anchors = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epoch):  # one epoch, or two where the batch spans their boundary
            chosen = epoch == e
            anchors[chosen] = self._permutation(int(e))(position[chosen])
        return anchors + epoch * self.num_anchors

    def _permutation(self, epoch: int) -> EpochPermutation:
        if epoch not in self._permutations:
            self._permutations = {
                epoch: EpochPermutation(self.num_anchors, self.seed, epoch)
            }  # the latest only
        return self._permutations[epoch]


#: Positions per block of `InstrumentMix`: each instrument's share is exact within every block.
MIX_BLOCK = 4096


class InstrumentMix:
    """Positions of the sample stream shared out among instruments by weight, in memory of the number of
    instruments (nothing per anchor).

    The stream is cut into blocks of ``M`` positions (`MIX_BLOCK` or more). Instrument ``i`` owns ``c_i``
    slots of every block, its weight times ``M`` rounded (largest remainders; at least one slot each), and
    a keyed bijection of the block (`stage1_ds.data.streams.permute`, keyed by the block) scatters the
    slots over it. Block ``k`` holds instrument ``i``'s draws ``k c_i`` to ``(k + 1) c_i - 1``; its
    ``q``-th draw is its anchor ``perm_{i, e}(q mod n_i)`` in its own epoch ``e = q div n_i``. So an
    instrument runs through all its anchors before it repeats one (to within the order inside a block),
    and a small instrument repeats sooner. The sample id is ``e * N`` plus the anchor (``N`` all anchors),
    unique per draw, so a repeated anchor gets other masks. Like the plain sampler, batch ``b`` of rank
    ``r`` is a pure function of the seed, the rank, the world size and ``b``.

    Args:
        anchors: (instruments,) anchors of each instrument, their ids consecutive in this order.
        weights: (instruments,) relative weights (`instrument_weights`).
        seed: the sampler's seed.
    """

    def __init__(self, anchors: np.ndarray, weights: np.ndarray, seed: int):
        self.anchors = np.asarray(anchors, dtype=np.int64)
        self.before = np.r_[0, np.cumsum(self.anchors)].astype(np.int64)
        used = self.anchors > 0
        share = np.where(used, np.asarray(weights, dtype=np.float64), 0.0)
        self.block = max(MIX_BLOCK, 2 * int(used.sum()))
        exact = share / share.sum() * self.block
        slots = np.where(used, np.maximum(np.floor(exact), 1), 0).astype(np.int64)
        spare = self.block - int(slots.sum())
        if spare > 0:  # largest remainders first
            order = np.argsort(-(exact - np.floor(exact)) + np.where(used, 0, np.inf), kind="stable")
            slots[order[:spare]] += 1
        self.block = int(slots.sum())  # the floor of one slot each can only add
        self.slots = slots
        self.slots_before = np.r_[0, np.cumsum(slots)].astype(np.int64)
        self.seed = seed

    @property
    def shares(self) -> np.ndarray:
        """(instruments,) the fraction of positions each instrument gets."""
        return self.slots / self.block

    def sample_ids(self, positions: np.ndarray) -> np.ndarray:
        """Sample ids at the given stream positions."""
        block, offset = np.divmod(positions, self.block)
        slot = permute(offset, np.asarray(self.block, dtype=np.uint64), block_keys(self.seed, block))
        instrument = np.searchsorted(self.slots_before, slot, side="right") - 1
        draw = block * self.slots[instrument] + slot - self.slots_before[instrument]
        epoch, position = np.divmod(draw, self.anchors[instrument])
        local = keyed_permute(
            position, self.anchors[instrument].astype(np.uint64), self.seed, instrument + (epoch << 20)
        )
        return epoch * self.before[-1] + self.before[instrument] + local


def instrument_weights(anchors: np.ndarray, sampling: InstrumentSampling, temperature: float) -> np.ndarray:
    """(instruments,) relative weights of the instruments for `InstrumentMix`."""
    anchors = np.asarray(anchors, dtype=np.float64)
    if sampling == InstrumentSampling.UNIFORM:
        return (anchors > 0).astype(np.float64)
    power = 1.0 if sampling == InstrumentSampling.PROPORTIONAL else 1.0 / temperature
    return anchors**power


def training_mix(windows: Any, config: DataConfig, seed: int) -> InstrumentMix | None:
    """The `InstrumentMix` of ``config.instrument_sampling`` over ``windows``' instruments (None for
    ``proportional``: the plain sampler), its shares logged."""
    if config.instrument_sampling == InstrumentSampling.PROPORTIONAL:
        return None
    anchors = windows.instrument_anchors
    mix = InstrumentMix(
        anchors, instrument_weights(anchors, config.instrument_sampling, config.instrument_temperature), seed
    )
    shares = sorted(zip(mix.shares, anchors / anchors.sum(), windows.instruments, strict=True), reverse=True)
    log.info(
        "instrument sampling %s: %s",
        config.instrument_sampling.value,
        ", ".join(f"{name} {share:.1%} (of anchors {own:.1%})" for share, own, name in shares[:8])
        + (f", and {len(shares) - 8} more" if len(shares) > 8 else ""),
    )
    return mix


def _unwrap(batch: Any) -> Any:
    # __getitems__ already built the whole batch; module level so that workers can pickle it.
    return batch


def build_loader(dataset: Dataset, sampler: WindowSampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader that asks the dataset for whole batches; ``num_workers`` processes build them.

    It has a generator of its own: by default a DataLoader draws its workers' base seed from torch's global
    random state when an iterator starts, which would shift the dropout of a resumed run against the
    uninterrupted one (batches are pure functions of their ids and need no randomness).
    """
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_unwrap,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(sampler.seed),
    )
