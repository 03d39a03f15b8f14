"""Aligned multi-timeframe windows: timing, the coarser-bar maps, splits, scale invariance, determinism."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import BatchSampler, DistributedSampler

from stage1_ds.config import SPLITS, DataConfig, InstrumentSampling
from stage1_ds.data.features import to_prices
from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, prepare_files
from stage1_ds.data.sampler import (
    MIX_BLOCK,
    InstrumentMix,
    WindowSampler,
    build_loader,
    instrument_weights,
    training_mix,
)
from stage1_ds.data.store import load_prepared
from stage1_ds.data.streams import FEISTEL_ROUNDS
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.data.windows import WindowDataset
from stage1_ds.timeframes import Timeframe, sort_timeframes

SMALL = DataConfig(window_bars=32)


def _ids(dataset: WindowDataset, n: int = 64, seed: int = 0) -> np.ndarray:
    return WindowSampler(len(dataset), n, seed=seed).batch_ids(0)


def _aggregate_by_map(fine: np.ndarray, parent: np.ndarray, coarse_len: int) -> tuple[np.ndarray, np.ndarray]:
    """First open, max high, min low, last close of the finer bars mapped to each coarser position."""
    out = np.full((coarse_len, 4), np.nan)
    for j in np.flatnonzero(parent >= 0):
        p = parent[j]
        if np.isnan(out[p, 0]):
            out[p] = fine[j]
        else:
            out[p, 1] = max(out[p, 1], fine[j, 1])
            out[p, 2] = min(out[p, 2], fine[j, 2])
            out[p, 3] = fine[j, 3]
    return out, ~np.isnan(out[:, 0])


def test_aggregating_true_bars_by_the_map_reproduces_coarser_bars(eurusd_2019: Path) -> None:
    dataset = WindowDataset(eurusd_2019, "train", DataConfig())
    ids = _ids(dataset, 32)
    batch = dataset.batch(ids)
    tfs = sort_timeframes(list(batch.windows))
    mapped_total = 0
    for fine, coarse in itertools.pairwise(tfs):
        fine_true, coarse_true = dataset.true_ohlc(ids, fine), dataset.true_ohlc(ids, coarse)
        parent = batch.windows[fine.value].parent_index.numpy()
        for b in range(len(ids)):
            agg, hit = _aggregate_by_map(fine_true[b], parent[b], coarse_true.shape[1])
            np.testing.assert_array_equal(agg[hit], coarse_true[b][hit])
            mapped_total += hit.sum()
            # Every coarser bar that is mapped to at all collects its whole bucket of finer bars.
            counts = np.bincount(parent[b][parent[b] >= 0], minlength=coarse_true.shape[1])
            start = batch.windows[fine.value].start_time[b].numpy()
            for p in np.flatnonzero(counts):
                c_start = batch.windows[coarse.value].start_time[b, p].item()
                in_bucket = (start >= c_start) & (start < c_start + coarse.seconds)
                assert counts[p] == in_bucket.sum()
        # In feature space too: undoing the power-of-two scale gives the exact aggregation.
        f = (
            batch.windows[fine.value].features.numpy()
            * batch.windows[fine.value].scale.numpy()[:, None, None]
        )
        c = (
            batch.windows[coarse.value].features.numpy()
            * batch.windows[coarse.value].scale.numpy()[:, None, None]
        )
        for b in range(len(ids)):
            agg, hit = _aggregate_by_map(f[b], parent[b], c.shape[1])
            np.testing.assert_array_equal(agg[hit], c[b][hit])
    assert mapped_total > 0


def test_every_window_ends_at_the_latest_complete_bar_before_the_anchor(eurusd_2019: Path) -> None:
    dataset = WindowDataset(eurusd_2019, "val", DataConfig())
    data = load_prepared(eurusd_2019)
    ids = _ids(dataset, 64, seed=3)
    batch = dataset.batch(ids)
    anchor = batch.anchor_time.numpy()
    m1_last = batch.windows["m1"].start_time[:, -1].numpy()
    np.testing.assert_array_equal(m1_last + 60, anchor)
    for name, window in batch.windows.items():
        tf = Timeframe(name)
        start = window.start_time.numpy()
        assert np.all(np.diff(start, axis=1) > 0)
        assert np.all(start[:, -1] + tf.seconds <= anchor)
        all_starts = np.asarray(data.bars[tf].start)
        for b in range(len(ids)):
            complete = all_starts[all_starts + tf.seconds <= anchor[b]]
            assert start[b, -1] == complete[-1]


def test_unmasked_windows_take_the_anchor_close_as_reference_and_features_invert(eurusd_2019: Path) -> None:
    dataset = WindowDataset(eurusd_2019, "test", DataConfig())
    ids = _ids(dataset, 16)
    batch = dataset.batch(ids)
    m1 = dataset.true_ohlc(ids, Timeframe.M1)
    np.testing.assert_allclose(batch.reference_price.numpy(), m1[:, -1, 3], rtol=1e-12)
    for name, window in batch.windows.items():
        prices = to_prices(window.features.numpy(), batch.reference_price.numpy(), window.scale.numpy())
        np.testing.assert_allclose(prices, dataset.true_ohlc(ids, Timeframe(name)), rtol=1e-6)


def test_no_window_of_one_split_touches_bars_of_another(eurusd_2019: Path) -> None:
    used: dict[str, dict[Timeframe, tuple[int, int]]] = {}
    for split in SPLITS:
        dataset = WindowDataset(eurusd_2019, split, DataConfig())
        used[split] = {
            tf: (int(rows.min()), int(rows.max()))
            for tf in dataset.timeframes
            for rows in [dataset.rows(np.arange(len(dataset)), tf)]
        }
    for tf in used["train"]:
        assert used["train"][tf][1] < used["val"][tf][0]
        assert used["val"][tf][1] < used["test"][tf][0]


def test_features_do_not_depend_on_the_price_level(tmp_path: Path) -> None:
    bars = generate_synthetic_m1(40, seed=11)
    folders = {}
    for factor in (1.0, 2.0, 3.7):
        path = tmp_path / f"x{factor}.csv"
        with path.open("w") as handle:
            handle.write("timestamp,open,high,low,close\n")
            for t, row in zip(bars.start, bars.ohlc * factor, strict=True):
                handle.write(f"{t}," + ",".join(repr(float(v)) for v in row) + "\n")
        folders[factor] = tmp_path / f"prepared{factor}"
        prepare_files(
            [path],
            folders[factor],
            InputFormat.CSV,
            "X",
            PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2)),
        )
    config = DataConfig(window_bars=16)
    base = WindowDataset(folders[1.0], "train", config)
    ids = _ids(base, 64)
    reference = base.batch(ids)
    for factor in (2.0, 3.7):
        other = WindowDataset(folders[factor], "train", config).batch(ids)
        for name, window in reference.windows.items():
            # Equal up to float64 rounding of log(factor * p) - log(factor * P), then float32 rounding.
            np.testing.assert_allclose(
                other.windows[name].features.numpy(), window.features.numpy(), atol=1e-6
            )


def test_same_seed_same_batches_and_restored_sampler_continues(synthetic_small: Path) -> None:
    config = DataConfig(window_bars=32, keep_probability={"h4": 0.5, "m5": 0.7})
    dataset = WindowDataset(synthetic_small, "train", config, seed=5)
    first = WindowSampler(len(dataset), 8, seed=1, num_batches=6)
    reference = [dataset.batch(np.array(ids)) for ids in first]
    again = [dataset.batch(np.array(ids)) for ids in WindowSampler(len(dataset), 8, seed=1, num_batches=6)]
    resumed = list(WindowSampler(len(dataset), 8, seed=1, start_batch=4, num_batches=2))
    for a, b in zip(reference, again, strict=True):
        for name in a.windows:
            assert a.windows[name].features.equal(b.windows[name].features)
            assert a.windows[name].valid.equal(b.windows[name].valid)
    assert [r.sample_id.tolist() for r in reference[4:]] == resumed
    other_seed = next(iter(WindowSampler(len(dataset), 8, seed=2, num_batches=1)))
    assert other_seed != reference[0].sample_id.tolist()


def test_workers_serve_the_same_batches(synthetic_small: Path) -> None:
    dataset = WindowDataset(synthetic_small, "train", SMALL, seed=5)
    direct = [dataset.batch(np.array(ids)) for ids in WindowSampler(len(dataset), 8, seed=1, num_batches=4)]
    loader = build_loader(dataset, WindowSampler(len(dataset), 8, seed=1, num_batches=4), num_workers=2)
    for a, b in zip(direct, loader, strict=True):
        assert a.windows["m15"].features.equal(b.windows["m15"].features)


def test_ranks_get_disjoint_shares(synthetic_small: Path) -> None:
    dataset = WindowDataset(synthetic_small, "train", SMALL)
    per_rank = []
    for rank in range(3):
        sampler = WindowSampler(len(dataset), 16, seed=0, rank=rank, world_size=3)
        per_rank.append(np.concatenate([sampler.batch_ids(b) for b in range(sampler.batches_per_epoch)]))
    for i in range(3):
        for j in range(i + 1, 3):
            assert not set(per_rank[i]) & set(per_rank[j])
    # torch's own DistributedSampler works too, through the batched fetch.
    shares = [list(BatchSampler(DistributedSampler(dataset, 2, r, shuffle=False), 4, True)) for r in range(2)]
    assert not {i for b in shares[0] for i in b} & {i for b in shares[1] for i in b}
    assert dataset.__getitems__(shares[1][0]).size == 4


def test_dropped_timeframes_are_masked_not_nan(synthetic_small: Path) -> None:
    config = DataConfig(window_bars=32, keep_probability={"m1": 0.0, "m30": 0.3, "h4": 0.0})
    dataset = WindowDataset(synthetic_small, "train", config, seed=9)
    batch = dataset.batch(_ids(dataset, 256))
    m30 = batch.windows["m30"]
    kept = m30.valid.any(dim=1)
    assert 0.1 < kept.float().mean() < 0.5
    assert m30.valid[kept].all() and (m30.features[~kept] == 0).all()
    assert not batch.windows["h4"].valid.any()
    assert (batch.windows["h1"].parent_index == -1).all(), "no map into a dropped timeframe"
    assert (batch.windows["m15"].parent_index[~kept] == -1).all()
    for window in batch.windows.values():
        assert window.features.isfinite().all()


def test_a_sample_never_drops_every_timeframe(synthetic_small: Path) -> None:
    config = DataConfig(timeframes=["m1", "h1"], window_bars=32, keep_probability={"m1": 0.0, "h1": 0.0})
    batch = WindowDataset(synthetic_small, "train", config).batch(np.arange(32))
    assert batch.windows["m1"].valid.all() and not batch.windows["h1"].valid.any()


def test_per_timeframe_window_lengths(synthetic_small: Path) -> None:
    config = DataConfig(timeframes=["m1", "m15", "h4"], window_bars=32, window_bars_per_timeframe={"h4": 8})
    batch = WindowDataset(synthetic_small, "val", config).batch(np.arange(4))
    assert batch.windows["h4"].features.shape == (4, 8, 4)
    assert batch.windows["m15"].parent_index.shape == (4, 32)


def test_windows_longer_than_the_split_allows_are_an_error(synthetic_small: Path) -> None:
    from stage1_ds.errors import DataError

    with pytest.raises(DataError, match=r"lower data\.window_bars to 32 .*--window-bars 400 \(a trained"):
        WindowDataset(synthetic_small, "val", DataConfig(window_bars=400))


@pytest.mark.parametrize(
    ("anchors", "batch", "ranks"), [(97, 8, 3), (25, 8, 3), (1, 1, 1), (2**17 + 1, 64, 4), (7, 2, 3)]
)
def test_the_sampler_serves_every_anchor_once_per_epoch_across_ranks(
    anchors: int, batch: int, ranks: int
) -> None:
    """Awkward sizes (prime; smaller than a batch times the ranks, plus one): the positions of an epoch, over
    all ranks' batches, are a permutation of the anchors; nothing of the anchors' size is held."""
    samplers = [WindowSampler(anchors, batch, seed=5, rank=r, world_size=ranks) for r in range(ranks)]
    per_batch = batch * ranks
    batches = -(-2 * anchors // per_batch) + 1  # past two epochs
    ids = np.stack([np.concatenate([s.batch_ids(b) for s in samplers]) for b in range(batches)])
    stream = np.empty(batches * per_batch, dtype=np.int64)
    for b in range(batches):  # rank r holds positions r, r + w, ... of each batch
        for r in range(ranks):
            stream[b * per_batch + r : (b + 1) * per_batch : ranks] = ids[b, r * batch : (r + 1) * batch]
    for epoch in range(2):
        part = stream[epoch * anchors : (epoch + 1) * anchors]
        assert sorted(part - epoch * anchors) == list(range(anchors)), epoch
    if anchors > 50:
        first, second = stream[:anchors], stream[anchors : 2 * anchors] - anchors
        assert not np.array_equal(first, second), "each epoch its own order"
        assert abs(np.corrcoef(np.arange(anchors), first)[0, 1]) < 0.1, "shuffled, not in order"
    held = [vars(s) for s in samplers] + [vars(p) for s in samplers for p in s._permutations.values()]
    arrays = [v.size for state in held for v in state.values() if isinstance(v, np.ndarray)]
    # The round keys (one per Feistel round) are the only arrays: a constant size, whatever the anchors.
    assert all(size < max(anchors // ranks, FEISTEL_ROUNDS + 1) for size in arrays), (
        "nothing grows with anchors"
    )


def _arrays(value: object) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    return []


def _file_backed(array: np.ndarray) -> bool:
    """Whether an array's memory is a memory-mapped file (shared through the page cache), not private."""
    import mmap

    base: object = array
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def test_a_dataset_holds_no_private_array_that_grows_with_the_anchors(synthetic_small: Path) -> None:
    """Everything the size of the anchors or the bars is the folder's memory-mapped arrays; what the dataset
    keeps of its own is per instrument and per timeframe."""
    dataset = WindowDataset(synthetic_small, "train", DataConfig(window_bars=32, channels=["ohlc", "volume"]))
    assert len(dataset) > 10_000
    private = [a.size for value in vars(dataset).values() for a in _arrays(value) if not _file_backed(a)]
    assert max(private) < 100, private


def test_a_fresh_serving_process_reuses_the_memory_of_its_last_batch(synthetic_small: Path) -> None:
    """In a fresh process (the allocator's state is the point, so not this one) a batch's arrays reuse the
    pages the previous batch freed: no page faults per batch once warm (glibc returned them to the system
    after every batch, about 2,000 faults per batch of 256 windows of 128 bars, 0.6x the speed)."""
    if sys.platform != "linux":
        pytest.skip("page-fault counts and glibc's allocator are Linux facts")
    script = f"""
import resource
from stage1_ds.config import DataConfig
from stage1_ds.data.windows import WindowDataset
from stage1_ds.data.sampler import WindowSampler
dataset = WindowDataset({str(synthetic_small)!r}, "train", DataConfig(window_bars=32), seed=0)
sampler = WindowSampler(len(dataset), 1024, seed=0)
for b in range(3):
    dataset.batch(sampler.batch_ids(b))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for b in range(3, 23):
    dataset.batch(sampler.batch_ids(b))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    faults_per_batch = float(out.stdout.strip().splitlines()[-1])
    assert faults_per_batch < 20, f"{faults_per_batch:.0f} page faults per batch"


MIX_ANCHORS = np.array([5_000, 120, 40_000, 9])


@pytest.mark.parametrize("sampling", [InstrumentSampling.UNIFORM, InstrumentSampling.TEMPERATURE])
def test_instruments_get_their_share_of_batches_on_two_disjoint_ranks(sampling: InstrumentSampling) -> None:
    weights = instrument_weights(MIX_ANCHORS, sampling, temperature=2.0)
    mix = InstrumentMix(MIX_ANCHORS, weights, seed=5)
    np.testing.assert_allclose(mix.shares, weights / weights.sum(), atol=1 / MIX_BLOCK)
    ranks = [WindowSampler(int(MIX_ANCHORS.sum()), 64, 5, rank, 2, mix=mix) for rank in range(2)]
    ids = [np.concatenate([sampler.batch_ids(b) for b in range(256)]) for sampler in ranks]
    assert not np.intersect1d(ids[0], ids[1]).size, "ranks draw disjoint samples"
    every = np.concatenate(ids)
    assert len(np.unique(every)) == len(every), "a repeated anchor is another sample (other masks)"
    before = np.r_[0, np.cumsum(MIX_ANCHORS)]
    instrument = np.searchsorted(before, every % before[-1], side="right") - 1
    seen = np.bincount(instrument, minlength=len(MIX_ANCHORS)) / len(every)
    np.testing.assert_allclose(seen, mix.shares, atol=2e-3)  # 8 whole blocks: exact but for rounding
    first = np.searchsorted(before, ids[0][:64] % before[-1], side="right") - 1
    assert len(np.unique(first)) >= 3, "the slots are scattered over a block, not in runs"


def test_an_instrument_runs_through_its_anchors_before_repeating_them() -> None:
    mix = InstrumentMix(MIX_ANCHORS, instrument_weights(MIX_ANCHORS, InstrumentSampling.UNIFORM, 1.0), seed=1)
    ids = mix.sample_ids(np.arange(39 * mix.block))
    before = np.r_[0, np.cumsum(MIX_ANCHORS)]
    anchor = ids % before[-1]
    instrument = np.searchsorted(before, anchor, side="right") - 1
    large = anchor[instrument == 2]  # 39 blocks of 1,024 draws: fewer than its 40,000 anchors
    assert len(large) == 39 * mix.slots[2] and len(np.unique(large)) == len(large)
    tiny = np.bincount(anchor[instrument == 3][: mix.slots[3]] - before[3], minlength=9)
    assert tiny.max() - tiny.min() <= 1, f"9 anchors over one block of draws: {tiny}"


def test_a_resumed_instrument_mix_serves_the_same_batches() -> None:
    mix = InstrumentMix(MIX_ANCHORS, instrument_weights(MIX_ANCHORS, InstrumentSampling.UNIFORM, 1.0), seed=2)
    whole = list(WindowSampler(int(MIX_ANCHORS.sum()), 32, 2, 1, 3, num_batches=90, mix=mix))
    again = InstrumentMix(
        MIX_ANCHORS, instrument_weights(MIX_ANCHORS, InstrumentSampling.UNIFORM, 1.0), seed=2
    )
    resumed = list(
        WindowSampler(int(MIX_ANCHORS.sum()), 32, 2, 1, 3, start_batch=60, num_batches=30, mix=again)
    )
    assert resumed == whole[60:]


def test_training_mix_follows_the_config_and_proportional_keeps_the_plain_sampler(
    synthetic_small: Path,
) -> None:
    dataset = WindowDataset(synthetic_small, "train", DataConfig(window_bars=16))
    assert training_mix(dataset, DataConfig(window_bars=16), seed=0) is None
    uniform = DataConfig(window_bars=16, instrument_sampling=InstrumentSampling.UNIFORM)
    mix = training_mix(dataset, uniform, seed=0)
    assert mix is not None and np.array_equal(mix.anchors, dataset.instrument_anchors)
    whole_blocks = mix.block * -(-len(dataset) // mix.block)  # an epoch of draws, to within a block
    ids = mix.sample_ids(np.arange(whole_blocks))
    assert len(np.unique(ids)) == len(ids), "one instrument: a new id for every draw"
    assert np.array_equal(np.unique(ids % len(dataset)), np.arange(len(dataset))), "every anchor drawn"
