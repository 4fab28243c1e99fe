"""Images per second converting the real BrEaST set (and optionally UDIAT) with the converters' worker pool.

Each run converts the whole dataset into a fresh temporary nnUNet_raw (decode, RGBA -> grey, mask merge, checks,
PNG encoding in the workers; bookkeeping, duplicate hashing, near-duplicate listing, report and validation in the
main process): end-to-end wall time, as a user sees it. Target: the whole BrEaST set in under 30 s on 2 cores.

    python benchmarks/bench_convert.py [--source ../shared/data/BrEaST] [-j 1 2] [--repeats 3] [--udiat PATH]

The AIMI-like HDF5 benchmark (frames/s, flat memory) lives in its own file.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dataset_conversion.breast import convert_breast, convert_udiat  # noqa: E402
from dataset_conversion.options import ConvertOptions  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def time_one(convert, source: Path, num_processes: int, name: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        options = ConvertOptions(dataset_id=990, name=name, num_processes=num_processes, progress=False)
        start = time.perf_counter()
        report = convert(source, options, raw_root=Path(tmp))
        seconds = time.perf_counter() - start
    images = sum(sum(report.added[s].values()) for s in ("train", "test")) + len(report.skipped)
    return seconds, images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=SHARED / "BrEaST", help="the BrEaST folder")
    p.add_argument("--udiat", type=Path, default=None, help="also time UDIAT Dataset B from this folder")
    p.add_argument("-j", "--num-processes", type=int, nargs="+", default=[1, 2], help="worker counts to time")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting (the median is reported)")
    args = p.parse_args(argv)
    if not args.source.is_dir():
        print(f"{args.source} not found: pass --source with the BrEaST folder", file=sys.stderr)
        return 2
    targets = [("BrEaST", convert_breast, args.source)]
    if args.udiat:
        targets.append(("UDIAT", convert_udiat, args.udiat))
    print(f"{'dataset':8} {'-j':>3} {'images':>7} {'median s':>9} {'images/s':>9}   runs (s)")
    for name, convert, source in targets:
        for j in args.num_processes:
            runs = [time_one(convert, source, j, name) for _ in range(args.repeats)]
            seconds = statistics.median(s for s, _ in runs)
            images = runs[0][1]
            print(f"{name:8} {j:>3} {images:>7} {seconds:>9.2f} {images / seconds:>9.1f}   "
                  + " ".join(f"{s:.2f}" for s, _ in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
