"""Data-path speed and memory, in one run.

    python scripts/bench_data.py                          # bundled Nottingham full/
    python scripts/bench_data.py --scale 1 10 100         # + corpora of 1x, 10x, 100x copies
    python scripts/bench_data.py --scale 10 --workers 1 2 4 8 16

Prints: preprocessing files/s (1 worker and all cores, in this process) beside a plain mido
parse of the same files; the whole `python -m apollogan.preprocess` command (default
workers: one per core) against a plain mido parse in its own process; ShardSet.get windows/s
(the training loop's gather) beside a gather from an in-RAM array of the same size (bit-packed and uint8 memmaps); MIDI writing files/s
(rolls -> files on disk, symusic beside a plain mido writer) and the whole
`python -m apollogan.decode --limit 1000` command.

--scale K builds a corpus of K copies of the input files (copied, under K folders) and
times the whole preprocess command on it, one worker, with its peak RSS (VmHWM), files/s and
manifest size; --workers N ... times it again with N worker processes. Goals: whole-process
preprocessing >= 10x a plain mido parse, loading >= half the in-RAM rate, peak RSS at 100x
at most 1.5x the 1x figure, MIDI writing >= 1,000 files/s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np
import torch

from apollogan.cli import bundled_data, find_midi_files
from apollogan.data import WindowOptions, preprocess
from apollogan.midi import notes_to_midi, roll_to_parts, save_midi, write_tpq
from apollogan.shards import ShardSet
from apollogan.spec import RollSpec


def rate(n, fn, repeat=3):
    best = min(_timed(fn) for _ in range(repeat))
    return n / best


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_child(args, env=None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of ``python ARGS`` in a child process that reports its own VmHWM
    (not ru_maxrss: on Linux that carries the parent's peak across fork + exec)."""
    code = ("import runpy, sys, atexit\n"
            "atexit.register(lambda: sys.stderr.write('VmHWM ' + next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')) + '\\n'))\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True) if not sys.argv[0].endswith('.py') "
            "else runpy.run_path(sys.argv[0], run_name='__main__')\n")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return wall, int(r.stderr.split("VmHWM")[-1].split()[0]) / 1024


def whole_process(cmd: list) -> float:
    """Best of 3 wall seconds of a command in its own process."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def mido_write(parts, spec, path) -> None:
    """The writer apollogan used before symusic: one mido message per event, for the comparison."""
    tpq = write_tpq(spec.steps_per_beat)
    tick = tpq // spec.steps_per_beat
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    for k, notes in enumerate(parts):
        ev = sorted([(e * tick, 0, p) for p, s, e in notes.tolist()] + [(s * tick, 1, p) for p, s, e in notes.tolist()])
        track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)] if k == 0 else [])
        track.append(mido.Message("program_change", program=0, channel=k))
        now = 0
        for t, on, p in ev:
            track.append(mido.Message("note_on" if on else "note_off", note=p, velocity=90 if on else 0, channel=k,
                                      time=t - now))
            now = t
        mid.tracks.append(track)
    mid.save(str(path))


def build_corpus(files: list[Path], copies: int, root: Path) -> Path:
    """``copies`` copies of ``files`` under root/copyNNN/ (the names stay distinct by folder)."""
    for k in range(copies):
        d = root / f"copy{k:03d}"
        d.mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, d / os.path.basename(f))
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*")
    ap.add_argument("--scale", type=int, nargs="*", default=[], metavar="K",
                    help="also time the whole preprocess command on corpora of K copies of the input (e.g. 1 10 100)")
    ap.add_argument("--workers", type=int, nargs="*", default=[], metavar="N",
                    help="with --scale: also time each corpus with N worker processes")
    ap.add_argument("--write", type=int, default=1000, help="windows written as MIDI files (default %(default)s)")
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

        shards = ShardSet(out)
        n = len(shards)
        ram = shards.get(np.arange(n)).copy()  # uint8 [N, C, P, T] in memory
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
        r_loader = rate(total, lambda: [torch.from_numpy(shards.get(i)).float() for i in idx])  # the training loop's gather
        print(f"in-RAM uint8 gather:       {r_ram:9.0f} windows/s -> float tensors (batch {a.batch}, {n} windows)")
        print(f"in-RAM bit-packed gather:  {r_packed:9.0f} windows/s -> float tensors")
        print(f"uint8 memmap gather:       {r_u8:9.0f} windows/s  ({ram.nbytes / 2**20:.1f} MiB on disk)")
        disk = sum(p.stat().st_size for p in out.glob("*.bin"))
        print(f"bit-packed ShardSet.get:   {r_loader:9.0f} windows/s  ({disk / 2**20:.1f} MiB on disk), "
              f"{r_loader / r_ram:.2f}x in-RAM uint8, {r_loader / r_packed:.2f}x in-RAM bit-packed")

        rolls = shards.get(np.arange(min(n, a.write)))
        outdir = Path(tmp) / "written"
        outdir.mkdir()
        parts = [roll_to_parts(r, spec) for r in rolls]
        w_sym = rate(len(rolls), lambda: [save_midi(notes_to_midi(p, spec), outdir / f"s{i:04d}.mid", durable=False)
                                          for i, p in enumerate(parts)])
        w_mido = rate(len(rolls), lambda: [mido_write(p, spec, outdir / f"m{i:04d}.mid") for i, p in enumerate(parts)],
                      repeat=1)
        w_sync = rate(len(rolls), lambda: [save_midi(notes_to_midi(p, spec), outdir / f"f{i:04d}.mid")
                                           for i, p in enumerate(parts)], repeat=1)
        print(f"MIDI writing, {len(rolls)} windows: {w_sym:9.0f} files/s (symusic; {w_sym / w_mido:.0f}x the mido "
              f"writer's {w_mido:.0f}; {w_sync:.0f} with an fsync per file)")
        dec = whole_process([sys.executable, "-m", "apollogan.decode", out, "--limit", str(a.write), "--out",
                             Path(tmp) / "decoded"])
        print(f"python -m apollogan.decode --limit {a.write}: {dec:.2f} s wall, {a.write / dec:.0f} files/s "
              "(whole command)")

        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(map(str, files)))
        whole = whole_process([sys.executable, "-m", "apollogan.preprocess", *(a.inputs or []), "--out",
                               Path(tmp) / "w", "--quiet"])
        mido_cmd = ("import mido, sys\n"
                    f"[mido.MidiFile(f) for f in open({str(listing)!r}).read().splitlines()]")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", mido_cmd], check=True)
        mido_whole = time.perf_counter() - t
        print(f"whole process, {len(files)} files: python -m apollogan.preprocess {whole:.2f} s, plain mido parse "
              f"{mido_whole:.2f} s: {mido_whole / whole:.1f}x")

        for k in a.scale:
            corpus = build_corpus(files, k, Path(tmp) / f"x{k}")
            wall, rss = run_child(["apollogan.preprocess", corpus, "--out", Path(tmp) / f"c{k}", "--quiet",
                                   "--workers", "1"])  # one process: its VmHWM is the whole footprint
            mb = (Path(tmp) / f"c{k}" / "manifest.json").stat().st_size / 1024
            print(f"scale {k:4d}x: {len(files) * k:7d} files, {wall:7.1f} s, {len(files) * k / wall:6.0f} files/s, "
                  f"peak RSS {rss:6.1f} MiB, manifest {mb:.1f} KiB")
            shutil.rmtree(Path(tmp) / f"c{k}")
            for w in a.workers:
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "apollogan.preprocess", corpus, "--out", Path(tmp) / "cw",
                                "--quiet", "--workers", str(w)], check=True, capture_output=True)
                wall = time.perf_counter() - t
                print(f"scale {k:4d}x, {w:2d} workers: {len(files) * k / wall:6.0f} files/s ({wall:.1f} s)")
                shutil.rmtree(Path(tmp) / "cw")
            shutil.rmtree(corpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
