"""How faithful the representation is on real music.

1. Grid: the share of note onsets and offsets that fall off the grid at several
   steps-per-beat (the figure the default steps_per_beat was chosen from).
2. Round trip: note precision and recall of MIDI -> windows -> MIDI -> notes, against the
   file's notes on the grid, with and without the onset channel.

    python scripts/codec_report.py                       # bundled Nottingham full/
    python scripts/codec_report.py my_midi/ --grids 2 4 8
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import symusic
from tqdm import tqdm

from apollogan.cli import bundled_data, find_midi_files, run
from apollogan.data import WindowOptions, convert_file
from apollogan.midi import MidiError, match_notes, notes_to_midi, parse_song, read_song, roll_to_notes
from apollogan.spec import RollSpec


def grid_table(files, grids) -> list[tuple[int, float, float]]:
    on, off = [], []
    tpqs = []
    for f in files:
        try:
            s = symusic.Score(str(f))
        except Exception:
            continue
        for t in s.tracks:
            if t.is_drum:
                continue
            a = t.notes.numpy()
            on.append(a["time"].astype(np.int64))
            off.append((a["time"] + a["duration"]).astype(np.int64))
            tpqs.append(np.full(len(a["time"]), s.ticks_per_quarter))
    on, off, tpq = np.concatenate(on), np.concatenate(off), np.concatenate(tpqs)
    return [(g, float(((on * g) % tpq != 0).mean()), float(((off * g) % tpq != 0).mean())) for g in grids]


def window_roundtrip(path, spec: RollSpec, opt: WindowOptions):
    """(file's notes on the grid, notes after windows -> roll -> MIDI file -> read back)."""
    song = read_song(path, spec)
    res = convert_file(path, 0, "val", spec, opt)
    c, p, t = spec.shape
    full = np.zeros((c, p, int(res.records["offset"].max()) + t), bool)
    wins = np.unpackbits(res.packed, axis=1, count=c * p * t).reshape(-1, c, p, t).astype(bool)
    for w, off in zip(wins, res.records["offset"]):  # overlapping windows hold the same cells
        full[:, :, off:off + t] |= w
    data = notes_to_midi(roll_to_notes(full, spec), spec, tempo=song.tempo).dumps_midi()
    return song.notes, parse_song(data, spec).notes


def roundtrip_scores(files, spec: RollSpec, opt: WindowOptions, progress=True) -> dict:
    ref = cand = hit = 0
    for f in tqdm(files, desc=f"round trip onset={spec.onset}", disable=not progress, file=sys.stderr):
        try:
            a, b = window_roundtrip(f, spec, opt)
        except MidiError:
            continue
        ref, cand, hit = ref + len(a), cand + len(b), hit + match_notes(a, b)
    return {"precision": hit / max(cand, 1), "recall": hit / max(ref, 1), "notes": ref}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="MIDI files or folders (default: bundled Nottingham full/)")
    ap.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16])
    ap.add_argument("--hop", type=int, default=WindowOptions().hop)
    a = ap.parse_args(argv)
    files = find_midi_files(a.inputs or [bundled_data()])
    print(f"{len(files)} files\n\n| steps per beat | onsets off grid | offsets off grid |\n| --- | --- | --- |")
    for g, fon, foff in grid_table(files, a.grids):
        print(f"| {g} | {fon:.2%} | {foff:.2%} |")
    print("\n| channels | note precision | note recall |\n| --- | --- | --- |")
    for onset in (False, True):
        r = roundtrip_scores(files, RollSpec(onset=onset), WindowOptions(hop=a.hop))
        print(f"| {'onset+sustain' if onset else 'sustain'} | {r['precision']:.4f} | {r['recall']:.4f} |")
    return 0


if __name__ == "__main__":
    run(main)
