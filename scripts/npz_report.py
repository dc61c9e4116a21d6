"""How the .npz path compares with the MIDI path, tune by tune.

    python scripts/npz_report.py                    # the bundled Nottingham tunes
    python scripts/npz_report.py my_midi/ --resolution 24

Each MIDI file is turned into a pypianoroll Multitrack .npz in two ways:
- with ``pypianoroll.read`` (pypianoroll's own MIDI reader, through pretty_midi);
- with pypianoroll's classes and ``save()`` from the notes and bar lines as symusic reads them;
and both are preprocessed like the MIDI file. A tune matches when its windows are identical
(every cell, offset and count). Prints a markdown table by meter.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pypianoroll
import symusic
from tqdm import tqdm

from apollogan.cli import bundled_data, find_midi_files
from apollogan.data import WindowOptions, convert_file
from apollogan.pianoroll import multitrack_from_midi
from apollogan.spec import RollSpec


def same(a, b) -> bool:
    return not a.error and not b.error and np.array_equal(a.packed, b.packed) and \
        np.array_equal(a.records["offset"], b.records["offset"])


def meter_of(path) -> str:
    found = sorted({f"{t.numerator}/{t.denominator}" for t in symusic.Score(str(path)).time_signatures})
    return found[0] if len(found) == 1 else "mixed"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*")
    ap.add_argument("--resolution", type=int, default=24, help="time steps per beat of the .npz (LPD: 24)")
    a = ap.parse_args(argv)
    spec, opt = RollSpec(), WindowOptions()
    files = [f for f in find_midi_files(a.inputs or [bundled_data()]) if not f.endswith(".npz")]
    tally = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(tqdm(files, desc="npz report", unit="file", file=sys.stderr)):
            midi = convert_file(f, 0, "val", spec, opt)
            if midi.error:
                continue
            meter = meter_of(f)
            tally[meter, "files"] += 1
            read = Path(tmp) / f"r{i}.npz"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pypianoroll.read(f, resolution=a.resolution).save(read)
                tally[meter, "read"] += same(midi, convert_file(read, 0, "val", spec, opt))
            except Exception:  # pypianoroll.read raising is a mismatch too
                pass
            built = Path(tmp) / f"s{i}.npz"
            multitrack_from_midi(f, a.resolution).save(built)
            tally[meter, "built"] += same(midi, convert_file(built, 0, "val", spec, opt))
    meters = sorted({m for m, _ in tally}, key=lambda m: -tally[m, "files"])
    print("| meter | tunes | .npz by pypianoroll.read | .npz from symusic notes and bar lines |")
    print("| --- | --- | --- | --- |")
    for m in meters:
        n = tally[m, "files"]
        print(f"| {m} | {n} | {tally[m, 'read']} ({tally[m, 'read'] / n:.1%}) | "
              f"{tally[m, 'built']} ({tally[m, 'built'] / n:.1%}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
