"""Data pipeline benchmark: prepare time, windows served per second on one core (unmasked and with the masks
of each masking mode built), peak RSS while serving; with --scale, prepare at 1, 10 and 100 synthetic
instrument-years (time and peak RSS, 1 and 2 workers) and serving from the 100-instrument folder.

Usage: python scripts/bench_data.py [--histdata ../shared/data/histdata] [--json OUT.json]
       python scripts/bench_data.py --scale [--scale-sizes 1 10 100] [--scale-dir /tmp/stage1_scale] [--json OUT.json]
       python scripts/bench_data.py --serve-scale [--serve-sizes 1 10 100 300] [--batches N] [--json OUT.json]
       python scripts/bench_data.py --context [--context-days 120] [--batches N] [--json OUT.json]

Targets: prepare one HistData year < 10 s; >= 20,000 windows/s on one core unmasked and >= 15,000 with
masks (batches of 256, all six timeframes, 128 bars each, memory-mapped); serving two instruments x one
year < 500 MB RSS. Scale: peak RSS of prepare independent of the number of instruments (100
instrument-years within 1.2x of one), time linear in rows, at least 1.7x faster with 2 workers than 1,
serving unchanged (>= 20,000 windows/s per core) from the 100-instrument folder. Serve-scale: private
memory (USS) of a serving process within 1.2x from 1 to 300 instrument-years; four at once at most 4x one
over 1 instrument-year plus 10%; >= 20,000 windows/s per core with the default masks; first batch < 5 s.
Context (`data.context`): samples served per second on one core from eight synthetic instruments, with up
to K = 7 context instruments per sample against none, in the same process: windows per second (each
instrument's windows of a sample counted) at least half of those without context; samples per second are
reported beside (a sample with context is up to eight instruments' windows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def serve(data_dir: str, batches: int) -> dict[str, float]:
    """Serve ``batches`` batches of 256 on one core, unmasked and masked in each mode; report windows/s and
    the peak RSS of this process."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    from stage1_ds.config import DataConfig, MaskingConfig
    from stage1_ds.data.batch import Batch
    from stage1_ds.data.sampler import WindowSampler
    from stage1_ds.data.windows import WindowDataset
    from stage1_ds.model.masking import MaskedWindows

    dataset = WindowDataset(data_dir, "train", DataConfig(), seed=0)
    sampler = WindowSampler(len(dataset), 256, seed=0)
    variants: dict[str, Callable[..., Batch]] = {"unmasked": dataset.batch}
    for name, modes in (
        ("spans", None),
        ("time", None),
        ("horizon", None),
        ("mixture", MaskingConfig().modes),
    ):
        config = MaskingConfig(modes=modes or {name: 1.0})
        variants[name] = MaskedWindows(dataset, config, patch_len=8, seed=0).batch
    results: dict[str, float] = {"anchors": len(dataset)}
    for name, serve_batch in variants.items():
        serve_batch(sampler.batch_ids(0))  # warm the page cache and code paths
        start = time.perf_counter()
        served = sum(serve_batch(sampler.batch_ids(b)).size for b in range(1, batches + 1))
        results[f"windows_per_s_{name}"] = served / (time.perf_counter() - start)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.update(resident_split())
    return results


def serve_context(data_dir: str, batches: int) -> dict[str, float]:
    """Serve ``batches`` unmasked batches of 256 on one core without context and with ``data.context`` (K =
    7), alternating the two so that both see the same machine; samples per second and their ratio."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    from stage1_ds.config import DataConfig
    from stage1_ds.data.sampler import WindowSampler
    from stage1_ds.data.windows import WindowDataset

    plain = WindowDataset(data_dir, "train", DataConfig(), seed=0)
    context = WindowDataset(data_dir, "train", DataConfig(context=True, context_max=7), seed=0)
    sampler = WindowSampler(len(plain), 256, seed=0)
    seconds = {"plain": 0.0, "context": 0.0}
    slots = 0
    for b in range(batches + 1):
        for name, dataset in (("plain", plain), ("context", context)):
            start = time.perf_counter()
            batch = dataset.batch(sampler.batch_ids(b))
            if b:  # the first batch warms the page cache and code paths
                seconds[name] += time.perf_counter() - start
            if name == "context" and b and batch.context is not None:
                slots += int(batch.context.present.sum())
    served = 256 * batches
    return {
        "samples_per_s_plain": served / seconds["plain"],
        "samples_per_s_context": served / seconds["context"],
        "ratio": seconds["plain"] / seconds["context"],
        # every instrument's windows of a sample, the target's and its context's, per second
        "instrument_windows_per_s_context": (served + slots) / seconds["context"],
        "context_instruments_per_sample": slots / served,
        "instruments": len(plain.instruments),
    }


def resident_split() -> dict[str, float]:
    """This process's resident memory now, split (Linux): its own (anonymous) memory, and pages of mapped
    files (the memory-mapped bars: page cache, shared and reclaimable)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return {}
    fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    return {
        f"{key.lower()}_mb": int(fields[key].split()[0]) / 1024
        for key in ("RssAnon", "RssFile")
        if key in fields
    }


def prepare_child(out: str, instruments: int, workers: int) -> dict[str, float]:
    """Prepare ``instruments`` synthetic instrument-years in this (fresh) process: time, the peak RSS of this
    process, of one worker process, and of all of them together (sampled every 20 ms: the peak of a worker
    that exits is not in this process's rusage, and rusage of children counts the parent's pages a child
    shares between its fork and its exec)."""
    import threading

    import psutil

    from stage1_ds.data.prepare import PrepareOptions, prepare_synthetic

    me = psutil.Process()
    peaks = {"own": 0, "worker": 0, "total": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            own = me.memory_info().rss
            children = []
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):  # a worker may exit between the two calls
                    children.append(child.memory_info().rss)
            peaks["own"] = max(peaks["own"], own)
            peaks["worker"] = max(peaks["worker"], *children, 0)
            peaks["total"] = max(peaks["total"], own + sum(children))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    prepare_synthetic(
        Path(out), days=365, seed=0, options=PrepareOptions(workers=workers), instruments=instruments
    )
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    mb = 1 / 2**20
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": peaks["worker"] * mb,
        "total_peak_rss_mb": peaks["total"] * mb,
        "folder_mb": sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) * mb,
    }


def run_child(*args: str) -> dict:
    """Run this script again with ``args`` in a fresh process (so its peak RSS is its own); its last line is JSON."""
    child = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def scale(scale_dir: Path, batches: int, sizes: list[int]) -> dict[str, object]:
    """Prepare each size of instrument-years with 1 and 2 workers; serve from the largest folder."""
    results: dict[str, object] = {}
    largest = max(sizes)
    for instruments in sizes:
        for workers in (1, 2):
            out = scale_dir / f"i{instruments}_w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            measured = run_child("--prepare-child", str(out), str(instruments), str(workers))
            results[f"prepare_{instruments}x1y_{workers}w"] = measured
            print(
                f"prepare {instruments:>3} instrument-years, {workers} worker(s): {measured['seconds']:7.1f} s "
                f"({measured['seconds'] / instruments:.2f} s each), peak RSS {measured['peak_rss_mb']:.0f} MB, "
                f"one worker {measured['worker_peak_rss_mb']:.0f} MB, all processes "
                f"{measured['total_peak_rss_mb']:.0f} MB; folder {measured['folder_mb']:,.0f} MB"
            )
            if instruments < largest or workers < 2:
                shutil.rmtree(out)
    folder = scale_dir / f"i{largest}_w2"
    served = run_child("--serve", str(folder), "--batches", str(batches))
    results[f"serve_{largest}_instruments"] = served
    print(
        f"windows served on one core from {largest} instrument-years: {served['windows_per_s_unmasked']:,.0f} /s unmasked, "
        f"{served['windows_per_s_mixture']:,.0f} /s with the default masks; peak RSS {served['peak_rss_mb']:.0f} MB "
        f"(at the end: {served.get('rssanon_mb', float('nan')):.0f} MB own, "
        f"{served.get('rssfile_mb', float('nan')):.0f} MB of mapped files)"
    )
    shutil.rmtree(folder)
    return results


def serve_memory(data_dir: str, batches: int) -> dict[str, float]:
    """A serving process as one rank would be: open the train split with the default config, serve its
    first batch (start-up, timed from opening the folder, imports excluded), then ``batches`` batches of
    256 with the default masks on one core; report windows/s and this process's memory at the end: its own
    (anonymous) resident memory, RSS and the part of RSS that is mapped files, and USS (pages no other
    process maps: it counts the mapped bar pages too when no other process maps them)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import psutil
    import torch

    torch.set_num_threads(1)
    from stage1_ds.config import DataConfig, MaskingConfig
    from stage1_ds.data.sampler import WindowSampler
    from stage1_ds.data.windows import WindowDataset
    from stage1_ds.model.masking import MaskedWindows

    opened = time.perf_counter()
    dataset = WindowDataset(data_dir, "train", DataConfig(), seed=0)
    masked = MaskedWindows(dataset, MaskingConfig(), patch_len=8, seed=os.getpid())
    sampler = WindowSampler(len(dataset), 256, seed=os.getpid())
    masked.batch(sampler.batch_ids(0))
    first_batch = time.perf_counter() - opened
    start = time.perf_counter()
    served = sum(masked.batch(sampler.batch_ids(b)).size for b in range(1, batches + 1))
    per_s = served / (time.perf_counter() - start)
    memory = psutil.Process().memory_full_info()
    mb = 1 / 2**20
    return {
        "anchors": len(dataset),
        "first_batch_s": first_batch,
        "windows_per_s": per_s,
        "uss_mb": memory.uss * mb,
        "rss_mb": memory.rss * mb,
        "shared_mb": memory.shared * mb,
        **resident_split(),
    }


def serve_scale(scale_dir: Path, batches: int, sizes: list[int], ranks: int = 4) -> dict[str, object]:
    """For each size of synthetic instrument-years: one serving process alone, then ``ranks`` at once (as the
    ranks of one node), each in a fresh process; their private memory (USS), first-batch latency and
    windows/s. The folder is prepared with 2 workers and removed after."""
    results: dict[str, object] = {}
    for instruments in sizes:
        folder = scale_dir / f"serve_i{instruments}"
        shutil.rmtree(folder, ignore_errors=True)
        run_child("--prepare-child", str(folder), str(instruments), "2")
        alone = run_child("--serve-memory", str(folder), "--batches", str(batches))
        command = [sys.executable, __file__, "--serve-memory", str(folder), "--batches", str(batches)]
        children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(ranks)]
        together = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        results[f"{instruments}_instrument_years"] = {"alone": alone, "together": together, "folder_mb": size}
        print(
            f"{instruments:>4} instrument-years ({alone['anchors']:,} train anchors, folder {size:,.0f} MB): "
            f"alone: own memory {alone.get('rssanon_mb', float('nan')):.0f} MB (RSS {alone['rss_mb']:.0f} MB, "
            f"of it {alone.get('rssfile_mb', float('nan')):.0f} MB mapped bar files; USS {alone['uss_mb']:.0f} "
            f"MB), first batch {alone['first_batch_s']:.2f} s, {alone['windows_per_s']:,.0f} windows/s with "
            f"the default masks; {ranks} at once: own memory "
            + " + ".join(f"{t.get('rssanon_mb', float('nan')):.0f}" for t in together)
            + f" MB (USS {sum(t['uss_mb'] for t in together):.0f} MB in all), first batch up to "
            f"{max(t['first_batch_s'] for t in together):.2f} s"
        )
        shutil.rmtree(folder)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histdata", type=Path, default=REPO.parent / "shared" / "data" / "histdata")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--scale", action="store_true", help="the 1/10/100 instrument-year measurements")
    parser.add_argument("--scale-dir", type=Path, default=Path(tempfile.gettempdir()) / "stage1_scale")
    parser.add_argument("--scale-sizes", type=int, nargs="+", default=[1, 10, 100], help="instrument-years")
    parser.add_argument(
        "--serve-scale",
        action="store_true",
        help="private memory and speed of serving at 1 to 300 instrument-years",
    )
    parser.add_argument(
        "--serve-sizes", type=int, nargs="+", default=[1, 10, 100, 300], help="instrument-years"
    )
    parser.add_argument(
        "--context", action="store_true", help="serving with K = 7 context instruments against none"
    )
    parser.add_argument("--context-days", type=int, default=120, help="days of each synthetic instrument")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # internal: run `serve` in a fresh process
    parser.add_argument("--serve-context", help=argparse.SUPPRESS)  # internal: `serve_context`, fresh
    parser.add_argument("--serve-memory", help=argparse.SUPPRESS)  # internal: `serve_memory`, fresh process
    parser.add_argument("--prepare-child", nargs=3, help=argparse.SUPPRESS)  # internal: a fresh process
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(args.serve, args.batches)))
        return 0
    if args.serve_context:
        print(json.dumps(serve_context(args.serve_context, args.batches)))
        return 0
    if args.context:
        from stage1_ds.data.prepare import prepare_synthetic

        with tempfile.TemporaryDirectory() as tmp:
            prepare_synthetic(Path(tmp) / "eight", days=args.context_days, seed=0, instruments=8)
            served = run_child("--serve-context", str(Path(tmp) / "eight"), "--batches", str(args.batches))
        print(
            f"samples served on one core, {served['instruments']} instruments: "
            f"{served['samples_per_s_plain']:,.0f} /s alone, {served['samples_per_s_context']:,.0f} /s with "
            f"context ({served['context_instruments_per_sample']:.1f} other instruments per sample): "
            f"{served['ratio']:.2f}x; instruments' windows {served['instrument_windows_per_s_context']:,.0f} /s "
            f"with context: {served['instrument_windows_per_s_context'] / served['samples_per_s_plain']:.2f}x "
            "of those without (target >= 0.5)"
        )
        if args.json:
            args.json.write_text(json.dumps(served, indent=2) + "\n")
        return 0
    if args.serve_memory:
        print(json.dumps(serve_memory(args.serve_memory, args.batches)))
        return 0
    if args.prepare_child:
        out, instruments, workers = args.prepare_child
        print(json.dumps(prepare_child(out, int(instruments), int(workers))))
        return 0
    if args.scale or args.serve_scale:
        if args.scale:
            results = scale(args.scale_dir, args.batches, args.scale_sizes)
        else:
            results = serve_scale(args.scale_dir, args.batches, args.serve_sizes)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0

    from stage1_ds.data.prepare import prepare_files

    year = args.histdata / "HISTDATA_COM_ASCII_EURUSD_M12019.zip"
    pair = [
        args.histdata / "HISTDATA_COM_ASCII_EURUSD_M12018.zip",
        args.histdata / "HISTDATA_COM_ASCII_GBPUSD_M12018.zip",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        timings = []
        for i in range(3):
            start = time.perf_counter()
            prepare_files([year], Path(tmp) / f"one{i}")
            timings.append(time.perf_counter() - start)
        prepare_files(pair, Path(tmp) / "two")
        served = run_child("--serve", str(Path(tmp) / "two"), "--batches", str(args.batches))
    results = {
        "prepare_one_year_s": min(timings),
        "prepare_one_year_runs_s": timings,
        **{f"serve_{k}": v for k, v in served.items()},
        "cpu_count": os.cpu_count(),
    }
    print(f"prepare EURUSD 2019 (372k rows): {results['prepare_one_year_s']:.2f} s best of 3 (target < 10 s)")
    print(
        f"windows served on one core:      {served['windows_per_s_unmasked']:,.0f} /s unmasked (target >= 20,000)"
    )
    for mode in ("spans", "time", "horizon", "mixture"):
        print(
            f"  with {mode + ' masks:':<15}        {served[f'windows_per_s_{mode}']:,.0f} /s (target >= 15,000)"
        )
    print(f"peak RSS, 2 instruments x 1 year: {served['peak_rss_mb']:.0f} MB (target < 500 MB)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
