"""Frames per second and peak memory converting a synthetic AIMI-like HDF5 with the AIMI converter.

Builds ``dataset.hdf5`` (datasets image / mask uint8 (N, H, W) chunked per frame like h5py's chunks=(1, H, W), annot_id
bytes with a trailing underscore, frame_num) and ``metadata.csv`` in a temporary folder: cine clips of
``--clip-frames`` frames, each a speckle texture in a fan-shaped scan area that moves a little from frame to frame,
with an elliptic nodule mask. Each conversion runs in a fresh child process (``nnunet_mtl``'s converter, as a user
runs it, writing a fresh temporary nnUNet_raw) while this process samples the resident memory of the child's whole
process tree (converter + forkserver + workers, from /proc) every 20 ms. Reported per run: frames converted,
conversion seconds, frames/s, peak RSS of the converter's main process and peak RSS summed over its process tree.

    python benchmarks/bench_convert_hdf5.py [--frames 5000 10000] [-j 1 2] [--size 256 256] [--memory-j 2]

Targets (issue 3): >= 100 frames/s on 2 cores; memory flat as the file grows (compare the peaks of the sizes).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


# --- the synthetic file -----------------------------------------------------------------------------------------
def _fan(shape: tuple[int, int]) -> np.ndarray:
    """The fan-shaped scan area of a curvilinear probe (outside it the frame is black, as in exported cine)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = np.arctan2(x - w / 2, y + h * 0.15)
    radius = np.hypot(x - w / 2, y + h * 0.15)
    return (np.abs(angle) < 0.6) & (radius > h * 0.2) & (radius < h * 1.1)


def build_hdf5(folder: Path, frames: int, shape: tuple[int, int], clip_frames: int, seed: int = 0) -> None:
    """``folder/dataset.hdf5`` + ``metadata.csv`` with ``frames`` frames in clips of ``clip_frames``."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    h, w = shape
    rng = np.random.default_rng(seed)
    fan = _fan(shape)
    yy, xx = np.mgrid[0:h, 0:w]
    n_clips = -(-frames // clip_frames)
    with h5py.File(folder / "dataset.hdf5", "w") as f:
        image = f.create_dataset("image", (frames, h, w), np.uint8, chunks=(1, h, w))
        mask = f.create_dataset("mask", (frames, h, w), np.uint8, chunks=(1, h, w))
        annot = f.create_dataset("annot_id", (frames,), "S12")
        frame_num = f.create_dataset("frame_num", (frames,), np.int32)
        i = 0
        for clip in range(n_clips):
            # a texture twice as wide as a frame: frame k is a window shifted by k pixels (probe motion)
            texture = rng.rayleigh(45.0, (h, 2 * w)).clip(0, 255).astype(np.uint8)
            cy, cx, ry, rx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6), h * 0.12, w * 0.15
            n = min(clip_frames, frames - i)
            block_img = np.empty((n, h, w), np.uint8)
            block_mask = np.empty((n, h, w), np.uint8)
            for k in range(n):
                shift = k % w
                frame = texture[:, shift:shift + w].copy()
                nodule = ((yy - cy) / ry) ** 2 + ((xx - cx - 0.3 * k) / rx) ** 2 <= 1.0
                frame[nodule] //= 2  # hypoechoic nodule
                frame[~fan] = 0
                block_img[k] = frame
                block_mask[k] = np.where(nodule & fan, 255, 0)
            image[i:i + n] = block_img
            mask[i:i + n] = block_mask
            annot[i:i + n] = np.array([f"{1000 + clip}_".encode()] * n)
            frame_num[i:i + n] = np.arange(n)
            i += n
    with open(folder / "metadata.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["annot_id", "age", "sex", "location", "size_x", "size_y", "size_z", "ti-rads_level",
                      "ti-rads_composition", "ti-rads_echogenicity", "ti-rads_shape", "ti-rads_margin",
                      "ti-rads_echogenicfoci", "histopath_diagnosis"])
        for clip in range(n_clips):
            out.writerow([f"{1000 + clip}", 30 + clip % 50, "F" if clip % 3 else "M", "right", 1.1, 0.8, 0.9,
                          1 + clip % 5, "solid", "hypoechoic", "wider-than-tall", "smooth", "none", clip % 2])


# --- memory sampling ------------------------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class TreeSampler(threading.Thread):
    """Peak RSS of a process and of its whole process tree (sum), sampled from /proc."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_main = self.peak_tree = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            pids = _descendants(self.pid)
            sizes = [_rss_kib(p) for p in pids]
            self.peak_main = max(self.peak_main, sizes[0] if sizes else 0)
            self.peak_tree = max(self.peak_tree, sum(sizes))
            self.stop.wait(self.interval)


# --- one conversion (in a child process) --------------------------------------------------------------------
def child(source: str, num_processes: int, raw: str) -> int:
    import resource

    from dataset_conversion.aimi import convert_aimi
    from dataset_conversion.options import ConvertOptions

    options = ConvertOptions(dataset_id=990, name="BenchAIMI", split="test", num_processes=num_processes,
                             progress=False)
    start = time.perf_counter()
    report = convert_aimi(source, options, raw_root=raw)
    seconds = time.perf_counter() - start
    frames = sum(report.added.get("test", {}).values())
    print(json.dumps({"seconds": seconds, "frames": frames, "skipped": len(report.skipped),
                      "maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
    return 0


def run_once(source: Path, num_processes: int, workdir: Path) -> dict:
    raw = workdir / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    load = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(source), str(num_processes), str(raw)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    sampler.join()
    wall = time.perf_counter() - started
    shutil.rmtree(raw, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"conversion failed (exit {proc.returncode}): {err.strip()[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall=wall, load=load, peak_main_mib=sampler.peak_main / 1024, peak_tree_mib=sampler.peak_tree / 1024)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[5000, 10000],
                   help="file sizes in frames (speed at the first, memory at each; default 5000 10000)")
    p.add_argument("-j", "--num-processes", type=int, nargs="+", default=[1, 2],
                   help="worker counts timed on the first size (default 1 2)")
    p.add_argument("--memory-j", type=int, default=2, help="worker count for the other sizes (default 2)")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"), help="frame size")
    p.add_argument("--clip-frames", type=int, default=100, help="frames per cine clip (default 100)")
    p.add_argument("--workdir", type=Path, default=None, help="where the synthetic files go (default: a temp dir)")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench_hdf5_", dir=args.workdir))
    print(f"cpus {os.cpu_count()}, frame {args.size[0]}x{args.size[1]} uint8, clips of {args.clip_frames} frames, "
          f"chunks (1, H, W); work dir {workdir}")
    print(f"{'frames':>7} {'-j':>3} {'converted':>9} {'conv s':>7} {'frames/s':>8} {'peak main MiB':>13} "
          f"{'peak tree MiB':>13} {'file MiB':>8}  load avg (1/5/15 min) at start")
    try:
        for n, frames in enumerate(args.frames):
            source = workdir / f"aimi_{frames}"
            build_hdf5(source, frames, tuple(args.size), args.clip_frames)
            size_mib = (source / "dataset.hdf5").stat().st_size / 2 ** 20
            for j in (args.num_processes if n == 0 else [args.memory_j]):
                r = run_once(source, j, workdir)
                print(f"{frames:>7} {j:>3} {r['frames']:>9} {r['seconds']:>7.1f} {r['frames'] / r['seconds']:>8.1f} "
                      f"{r['peak_main_mib']:>13.0f} {r['peak_tree_mib']:>13.0f} {size_mib:>8.0f}  "
                      + " ".join(f"{x:.2f}" for x in r["load"]), flush=True)
            shutil.rmtree(source)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    sys.exit(main())
