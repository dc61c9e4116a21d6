"""Data-path speed and memory, in one run.

    python scripts/bench_data.py                 # bundled Nottingham full/, 20x copy for memory
    python scripts/bench_data.py --repeat 5 --batch 64

Prints: preprocessing files/s (1 worker and all cores) beside a plain mido parse of the
same files; loader windows/s to float tensors beside a gather from an in-RAM array of the
same size (bit-packed and uint8 memmaps); peak RSS of preprocessing the set once and
``--repeat`` times over. Goals on a 2-core machine: preprocessing >= 10x mido per core,
loading >= half the in-RAM rate, peak RSS flat as the input grows.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np
import torch

from apollogan.cli import bundled_data, find_midi_files
from apollogan.data import RollDataset, make_loader
from apollogan.preprocess import WindowOptions, preprocess
from apollogan.spec import RollSpec


def rate(n, fn, repeat=3):
    best = min(_timed(fn) for _ in range(repeat))
    return n / best


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def peak_rss_mb(inputs, out) -> float:
    """Preprocess in a child process that reports its own peak resident set size.

    VmHWM, not ru_maxrss: on Linux ru_maxrss carries the parent's peak across fork + exec.
    """
    code = ("import sys; from apollogan.preprocess import main; "
            f"main([*sys.argv[1:], '--out', {str(out)!r}, '--quiet']); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    r = subprocess.run([sys.executable, "-c", code, *map(str, inputs)], check=True, capture_output=True, text=True)
    return int(r.stdout.split()[-1]) / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*")
    ap.add_argument("--repeat", type=int, default=20, help="copies of the input for the memory figure")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=300)
    a = ap.parse_args(argv)
    files = find_midi_files(a.inputs or [bundled_data()])
    spec, opt = RollSpec(), WindowOptions()
    cores = os.cpu_count() or 1
    print(f"{len(files)} files, spec {spec.describe()}, {cores} cores, torch {torch.__version__}")

    mido_rate = rate(len(files), lambda: [mido.MidiFile(str(f)) for f in files], repeat=1)
    print(f"plain mido parse:          {mido_rate:9.0f} files/s")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "c"
        one = rate(len(files), lambda: preprocess(files, out, spec, opt, progress=False))
        print(f"preprocess, 1 worker:      {one:9.0f} files/s  ({one / mido_rate:.1f}x mido)")
        many = rate(len(files), lambda: preprocess(files, out, spec, opt, workers=cores, progress=False))
        print(f"preprocess, {cores} workers:     {many:9.0f} files/s  ({many / mido_rate / cores:.1f}x mido per core)")

        ds = RollDataset(out)
        n = len(ds)
        ram = ds.shards.get(np.arange(n)).copy()  # uint8 [N, C, P, T] in memory
        u8 = Path(tmp) / "u8.bin"
        ram.tofile(u8)
        u8map = np.memmap(u8, dtype=np.uint8, mode="r", shape=ram.shape)
        rng = np.random.default_rng(0)
        idx = [np.sort(rng.choice(n, a.batch, replace=False)) for _ in range(a.batches)]
        total = a.batch * a.batches

        def gather(src):
            return lambda: [torch.from_numpy(src[i]).float() for i in idx]

        r_ram = rate(total, gather(ram))
        packed_ram = np.packbits(ram.reshape(n, -1), axis=1)
        c, p, t = spec.shape
        r_packed = rate(total, lambda: [torch.from_numpy(np.unpackbits(packed_ram[i], axis=1, count=c * p * t)
                                                         .reshape(-1, c, p, t)).float() for i in idx])
        r_u8 = rate(total, gather(u8map))
        loader = make_loader(ds, a.batch, shuffle=True, seed=0)

        def run_loader():
            seen = 0
            while seen < total:
                for b in loader:
                    seen += len(b)
                    if seen >= total:
                        break
        r_loader = rate(total, run_loader)
        print(f"in-RAM uint8 gather:       {r_ram:9.0f} windows/s -> float tensors (batch {a.batch}, {n} windows)")
        print(f"in-RAM bit-packed gather:  {r_packed:9.0f} windows/s -> float tensors")
        print(f"uint8 memmap gather:       {r_u8:9.0f} windows/s  ({ram.nbytes / 2**20:.1f} MiB on disk)")
        disk = sum(p.stat().st_size for p in out.glob("*.bin"))
        print(f"bit-packed DataLoader:     {r_loader:9.0f} windows/s  ({disk / 2**20:.1f} MiB on disk), "
              f"{r_loader / r_ram:.2f}x in-RAM uint8, {r_loader / r_packed:.2f}x in-RAM bit-packed")

        rss1 = peak_rss_mb(a.inputs or [bundled_data()], Path(tmp) / "r1")
        big = Path(tmp) / "big"
        for k in range(a.repeat):
            (big / f"copy{k:02d}").mkdir(parents=True)
            for f in files:
                os.symlink(f.resolve(), big / f"copy{k:02d}" / f.name)
        rss_n = peak_rss_mb([big], Path(tmp) / "rn")
        print(f"peak RSS, preprocess x1:   {rss1:9.0f} MiB ({len(files)} files)")
        print(f"peak RSS, preprocess x{a.repeat}:  {rss_n:9.0f} MiB ({len(files) * a.repeat} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
