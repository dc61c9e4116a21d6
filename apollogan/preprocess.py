"""MIDI or pypianoroll .npz files -> bit-packed [C, 64, 256] windows in shards, with a manifest.

    python -m apollogan.preprocess                       # bundled Nottingham tunes -> chunks/nottingham
    python -m apollogan.preprocess my_midi/ --out chunks/mine --onset --transpose 2
    python -m apollogan.preprocess --parts tracks --out chunks/nottingham-parts   # melody and chords
    python -m apollogan.preprocess lpd_5_cleansed/ --out chunks/lpd5 --workers 8  # pypianoroll .npz files
    python -m apollogan.preprocess Nottingham.mat --out chunks/nottingham-bench   # the likelihood benchmark

Windows start on bar lines (the first downbeat at or after every ``hop`` steps), so bar
metrics line up with the window. Files are split into train/val by name, never by window.
Bad files are skipped with one line each and counted; the same input and options always
give byte-identical shards. A benchmark file (.mat or .pickle: docs/benchmark.md) keeps its own
train / valid / test split, as train / val / test windows plus the whole tunes of each split, on a
grid of 2 steps per beat; a note outside the pitch window is an error, not a dropped note.
The decisions behind each step and their measurements are in docs/data.md; the files written
are described in docs/formats.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .benchmark import benchmark_shards, benchmark_summary, is_benchmark_file
from .cli import UserError, bundled_data, find_midi_files, run
from .data import DEFAULT_OUT, WindowOptions, default_workers, folder_lock, preprocess, summary
from .spec import PART_MODES, RollSpec


def add_spec_args(ap: argparse.ArgumentParser) -> None:
    d = RollSpec()
    g = ap.add_argument_group("piano-roll spec")
    g.add_argument("--low", type=int, default=d.low, help="lowest MIDI pitch (default %(default)s)")
    g.add_argument("--pitches", type=int, default=d.pitches, help="number of pitch rows (default %(default)s)")
    g.add_argument("--steps", type=int, default=d.steps, help="time steps per window (default %(default)s)")
    g.add_argument("--steps-per-beat", type=int, help=f"grid resolution (default {d.steps_per_beat}; 2 for a "
                   "benchmark file, whose frames are eighth notes)")
    g.add_argument("--onset", action="store_true", help="add an onset channel: shape [2, P, T]")
    g.add_argument("--out-of-range", choices=["drop", "fold"], default=d.out_of_range,
                   help="notes outside the pitch window: drop (counted) or fold by octaves")
    g.add_argument("--parts", choices=PART_MODES, default=d.part_mode,
                   help="merge: one part of every track (default); tracks: each non-drum track its own part, "
                        "in file order (files with fewer are skipped); skyline: melody (highest sounding pitch "
                        "at each step) and accompaniment (the rest), for files whose tracks are not labelled")
    g.add_argument("--num-parts", type=int, metavar="N",
                   help="parts with --parts tracks (default 2: melody, then accompaniment; the last part "
                        "also takes every later track)")
    g.add_argument("--part-tracks", action="append", metavar="SEL",
                   help="with --parts tracks, once per part: part k takes the tracks matching the k-th SEL, a "
                        "comma-separated list of track names (any case; name:X for a name of digits) and General "
                        "MIDI programs or ranges, e.g. --part-tracks Guitar --part-tracks Piano,Bass,Strings "
                        "(LPD-5) or --part-tracks 0-7 --part-tracks 32-39; a track goes to the first part it "
                        "matches, other tracks are left out, and files with a part empty are skipped")


MAX_STEPS, MAX_STEPS_PER_BEAT = 16384, 96  # a window of 1,024 bars of 4/4 at 4 steps per beat; a fine MIDI grid


def spec_from_args(a, steps_per_beat: int | None = None) -> RollSpec:
    """The spec the arguments ask for; ``steps_per_beat``: the input's own grid, which the option must not contradict."""
    if not 1 <= a.steps <= MAX_STEPS or not 1 <= (a.steps_per_beat or 1) <= MAX_STEPS_PER_BEAT:
        raise UserError(f"--steps must be in 1..{MAX_STEPS} and --steps-per-beat in 1..{MAX_STEPS_PER_BEAT} "
                        f"(a window is held in memory per file, and written per window)")
    for flag, given in (("--num-parts", a.num_parts is not None), ("--part-tracks", a.part_tracks)):
        if given and a.parts != "tracks":
            raise UserError(f"{flag}: only with --parts tracks (--parts {a.parts} has "
                            f"{1 if a.parts == 'merge' else 2} part(s))")
    if a.part_tracks and a.num_parts not in (None, len(a.part_tracks)):
        raise UserError(f"--num-parts {a.num_parts}: --part-tracks gives {len(a.part_tracks)} parts")
    parts = {"merge": 1, "skyline": 2}.get(a.parts, len(a.part_tracks or ()) or a.num_parts or 2)
    if steps_per_beat and a.steps_per_beat not in (None, steps_per_beat):
        raise UserError(f"--steps-per-beat {a.steps_per_beat}: a benchmark file's frames are eighth notes, "
                        f"{steps_per_beat} steps per beat")
    try:
        return RollSpec(low=a.low, pitches=a.pitches, steps=a.steps,
                        steps_per_beat=steps_per_beat or a.steps_per_beat or RollSpec().steps_per_beat,
                        onset=a.onset, out_of_range=a.out_of_range, parts=parts, part_mode=a.parts,
                        part_tracks=tuple(a.part_tracks or ()))
    except ValueError as e:
        raise UserError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.preprocess", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", metavar="INPUT", help="MIDI files (.mid, .midi, .kar), pypianoroll .npz files "
                    "or folders of them (default: bundled Nottingham full/); or one benchmark file (.mat, .pickle)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default %(default)s)")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes; 0 (the default): one per CPU core this process may use")
    add_spec_args(ap)
    o = WindowOptions()
    g = ap.add_argument_group("windows and augmentation")
    g.add_argument("--hop", type=int, default=o.hop, help="steps between window starts, snapped to bar lines (default %(default)s)")
    g.add_argument("--min-cells", type=int, default=o.min_cells, help="drop windows with fewer active cells (default %(default)s)")
    g.add_argument("--transpose", type=int, default=o.transpose, help="transposed copies per train window (default %(default)s)")
    g.add_argument("--transpose-range", type=int, default=o.transpose_range, help="largest shift in semitones (default %(default)s)")
    g.add_argument("--key-normalize", action="store_true",
                   help="transpose each train file so that most of its note time is on the white keys (C major, A "
                        "minor and their modes; -6 to +5 semitones); validation files stay as written")
    g.add_argument("--time-shifts", type=int, nargs="*", default=[], metavar="S", help="extra train copies shifted by S steps")
    g.add_argument("--val-fraction", type=float, default=o.val_fraction, help="share of files for validation (default %(default)s)")
    g.add_argument("--seed", type=int, default=o.seed, help="augmentation seed (default %(default)s)")
    g.add_argument("--max-beats", type=int, default=o.max_beats, help="skip longer files as broken (default %(default)s)")
    g.add_argument("--shard-windows", type=int, default=8192, help="windows per shard file (default %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if any(is_benchmark_file(p) for p in a.inputs):
        return benchmark_main(a)
    spec = spec_from_args(a)
    if a.hop < 1 or a.workers < 0 or a.shard_windows < 1 or not 0 <= a.val_fraction < 1:
        raise UserError("--hop and --shard-windows must be positive, --workers 0 or more and --val-fraction in [0, 1)")
    if a.seed < 0 or a.transpose < 0 or a.transpose_range < 0 or a.min_cells < 0 or a.max_beats < 1:
        raise UserError("--seed, --transpose, --transpose-range and --min-cells must be 0 or more, --max-beats positive")
    opt = WindowOptions(a.hop, a.min_cells, a.transpose, a.transpose_range, tuple(a.time_shifts),
                        a.val_fraction, a.seed, a.max_beats, a.key_normalize)
    files = find_midi_files(a.inputs or [bundled_data()])
    if not files:
        raise UserError(f"no MIDI (.mid, .midi, .kar) or .npz files in {', '.join(map(str, a.inputs))}")
    workers = a.workers or default_workers(len(files))
    print(f"{len(files)} files -> {a.out}  spec {spec.describe()}", file=sys.stderr)
    try:
        with folder_lock(a.out):
            m = preprocess(files, a.out, spec, opt, workers=workers, shard_windows=a.shard_windows,
                           progress=not a.quiet)
    except KeyboardInterrupt:
        if workers > 1:  # the run's files are removed; the worker pool's threads must not hold up the exit
            print("interrupted", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(130)
        raise
    print(summary(m))
    if not m["counts"]["converted"]:
        raise UserError(f"no file converted ({len(files)} skipped); nothing written to {a.out}")
    return 0


def benchmark_main(a) -> int:
    if len(a.inputs) != 1:
        raise UserError("a benchmark file (.mat, .pickle) is preprocessed alone: its splits are its own")
    spec = spec_from_args(a, steps_per_beat=2)
    if a.hop < 1 or a.shard_windows < 1:
        raise UserError("--hop and --shard-windows must be positive")
    print(f"{a.inputs[0]} -> {a.out}  spec {spec.describe()}", file=sys.stderr)
    with folder_lock(a.out):
        m = benchmark_shards(a.inputs[0], a.out, spec, a.hop, a.min_cells, a.shard_windows)
    print(benchmark_summary(m))
    return 0


if __name__ == "__main__":
    run(main)
