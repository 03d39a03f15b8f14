"""Many prepared folders served as one dataset, without merging: the same batches as the merged folder,
a catalog file, unlike folders refused, and training across them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stage1_ds.config import DataConfig, MaskingConfig
from stage1_ds.data.corpus import CorpusWindows, data_folders, load_corpus, open_windows
from stage1_ds.data.ingest import InputFormat
from stage1_ds.data.prepare import PrepareOptions, merge_prepared, prepare_files
from stage1_ds.data.synthetic import generate_synthetic_m1
from stage1_ds.data.windows import WindowDataset
from stage1_ds.errors import DataError
from stage1_ds.model.masking import MaskedWindows

OPTIONS = PrepareOptions(window_bars=16, split_fractions=(0.6, 0.2, 0.2))
DATA = DataConfig(window_bars=16, channels=["ohlc", "volume"])


def _csv(folder: Path, name: str, seed: int, days: int = 40) -> Path:
    bars = generate_synthetic_m1(days, seed)
    frame = pd.DataFrame(
        {
            "timestamp": bars.start,
            "open": bars.ohlc[:, 0],
            "high": bars.ohlc[:, 1],
            "low": bars.ohlc[:, 2],
            "close": bars.ohlc[:, 3],
            "volume": bars.volume,
        }
    )
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two folders of disjoint instruments (AAA and BBB; CCC), and the folder that merging them gives."""
    root = tmp_path_factory.mktemp("corpus")
    first, second = root / "first", root / "second"
    prepare_files([_csv(root, "AAA", 1), _csv(root, "BBB", 2)], first, InputFormat.CSV, options=OPTIONS)
    prepare_files([_csv(root, "CCC", 3, days=30)], second, InputFormat.CSV, options=OPTIONS)
    merge_prepared([first, second], root / "merged")
    return first, second, root / "merged"


def test_a_corpus_serves_exactly_the_batches_of_the_folder_merging_it_gives(
    folders: tuple[Path, Path, Path],
) -> None:
    first, second, merged = folders
    for split in ("train", "val", "test"):
        corpus = open_windows([first, second], split, DATA, seed=3)
        whole = WindowDataset(merged, split, DATA, seed=3)
        assert isinstance(corpus, CorpusWindows) and len(corpus) == len(whole)
        assert corpus.instruments == whole.instruments == ["AAA", "BBB", "CCC"]
        np.testing.assert_array_equal(corpus.anchor_time, whole.anchor_time)
        np.testing.assert_array_equal(corpus.anchor_instrument, whole.anchor_instrument)
        ids = np.random.default_rng(0).integers(0, 2 * len(whole), 200)
        ours = MaskedWindows(corpus, MaskingConfig(), 8, seed=1).batch(ids)
        theirs = MaskedWindows(whole, MaskingConfig(), 8, seed=1).batch(ids)
        assert set(ours.instrument.tolist()) == {0, 1, 2}, "the batch mixes every folder"
        for name in ("reference_price", "anchor_time", "instrument", "sample_id", "mask_mode"):
            assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
        for tf, window in theirs.windows.items():
            for field in ("features", "valid", "start_time", "parent_index", "scale", "volume_scale", "mask"):
                a, b = getattr(ours.windows[tf], field), getattr(window, field)
                assert (a is None and b is None) or torch.equal(a, b), (split, tf, field)


def test_a_catalog_file_lists_the_folders(folders: tuple[Path, Path, Path], tmp_path: Path) -> None:
    first, second, _ = folders
    catalog = tmp_path / "corpus.txt"
    catalog.write_text(f"# two folders\n{first}\n\n{second}  # the second\n")
    assert data_folders(catalog) == [first, second]
    assert [d.root for d in load_corpus([catalog])] == [first, second]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match=r"empty\.txt: a catalog of prepared folders, but it lists none"):
        data_folders(tmp_path / "empty.txt")


def test_folders_prepared_otherwise_or_sharing_an_instrument_are_refused(
    folders: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    first, second, merged = folders
    with pytest.raises(DataError, match=r"instrument AAA is in .*first and .*merged"):
        load_corpus([first, merged])
    other = tmp_path / "other"
    options = PrepareOptions(window_bars=20, split_fractions=(0.6, 0.2, 0.2))
    prepare_files([_csv(tmp_path, "DDD", 4, days=60)], other, InputFormat.CSV, options=options)
    with pytest.raises(DataError, match=r"prepared with other options .*window_bars: 16 .*20"):
        load_corpus([first, second, other])


def test_training_reads_a_corpus_and_its_export_knows_every_instrument(
    folders: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    import json

    from conftest import tiny_train_config
    from stage1_ds.export import convert
    from stage1_ds.train.loop import train

    first, second, _ = folders
    config = tiny_train_config(max_steps=2, eval_every_steps=2, save_every_steps=2, image_every_steps=2)
    train(config, [first, second], tmp_path / "run")
    convert(tmp_path / "run", tmp_path / "export")
    stats = json.loads((tmp_path / "export" / "stats.json").read_text())
    assert sorted(stats["instruments"]) == ["AAA", "BBB", "CCC"]
