"""Distributions of generated rolls against real ones: the metrics' real reference (cached beside
the shards), their comparison (Wasserstein-1, KS, the overall figure), memorisation and diversity,
and the conditional model's figures. python -m apollogan.evaluate is its command line.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .cli import UserError, atomic_write_bytes, find_midi_files
from .data import WindowOptions, convert_file
from .metrics import PART_METRICS, STRUCTURE, metric_names, roll_metrics, split_parts, split_voices, steps_per_bar, structure_metrics
from .shards import ShardSet
from .spec import RollSpec

REFERENCE_VERSION = 2  # 2: the structure metrics cached too
IOU_THRESHOLDS = (0.5, 0.8, 0.95)
DIVERSITY_ROLLS = 256  # rolls per side whose pairs give the pair IoU (32,640 pairs)
VALIDATION_WINDOWS = 4096  # a model's own held-out figures: the whole split of the bundled data, a sample of larger ones


# --- real-data reference -------------------------------------------------------------------

def _shards_key(shards: ShardSet) -> str:
    """Changes whenever the split's shards or the metric set change."""
    h = hashlib.sha256(json.dumps([shards.manifest["shards"][shards.split], metric_names(shards.spec), list(STRUCTURE),
                                   REFERENCE_VERSION, shards.manifest["spec"]]).encode())
    return h.hexdigest()


def window_bars(shards: ShardSet) -> np.ndarray:
    return steps_per_bar(shards.records["ts_num"], shards.records["ts_den"], shards.spec.steps_per_beat)


def reference_metrics(root, split: str = "val", progress: bool = True) -> dict[str, np.ndarray]:
    """Per-window metrics of a split (the structure metrics as "structure/NAME"), cached as
    reference-SPLIT.npz beside the manifest."""
    shards = ShardSet(root, split)
    if len(shards) == 0:
        raise UserError(f"{root}: the {split} split has no windows to compare with")
    key = _shards_key(shards)
    # beside the manifest; where the set's folder cannot be written (read-only data), in the user's cache
    caches = [Path(root) / f"reference-{split}.npz"] + [p / f"reference-{key[:24]}.npz" for p in user_cache()]
    for cache in caches:
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    if str(z["_key"]) == key:
                        return {k: z[k] for k in z.files if k != "_key"}
            except (OSError, ValueError, KeyError):
                pass  # unreadable or old cache: recompute
    spec, bars = shards.spec, window_bars(shards)
    names = metric_names(spec)
    out = {k: np.empty(len(shards)) for k in names + [f"structure/{k}" for k in STRUCTURE]}
    step = 1024
    for lo in tqdm(range(0, len(shards), step), desc=f"reference metrics ({split})", unit="batch",
                   disable=not progress, file=sys.stderr):
        idx = np.arange(lo, min(lo + step, len(shards)))
        rolls = shards.get(idx)
        part = roll_metrics(rolls, spec, bars[idx])
        part.update({f"structure/{k}": v for k, v in structure_metrics(rolls, spec, bars[idx]).items()})
        for k in out:
            out[k][idx] = part[k]
    buf = io.BytesIO()
    np.savez(buf, _key=np.array(key), **out)
    for cache in caches:
        try:
            atomic_write_bytes(cache, buf.getvalue())
            break
        except OSError:  # no cache where it cannot be written: the figures stand, computed again next time
            continue
    return out


def user_cache() -> list[Path]:
    """Where caches of read-only shard sets go: [$XDG_CACHE_HOME/apollogan (~/.cache/apollogan)], or [] where
    there is no such place (no home folder)."""
    try:
        return [Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "apollogan"]
    except RuntimeError:
        return []


# --- comparison ----------------------------------------------------------------------------

def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical distributions: the area between their CDFs."""
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    allv.sort()
    fa = np.searchsorted(a, allv[:-1], side="right") / len(a)
    fb = np.searchsorted(b, allv[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(allv)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    allv = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, allv, side="right") / len(a)
                                - np.searchsorted(b, allv, side="right") / len(b))))


def compare(gen: dict[str, np.ndarray], real: dict[str, np.ndarray]) -> dict:
    """Per metric: generated and real mean/std, gap in real stds, W1, KS; and the overall figure."""
    rows = {}
    for k in gen:
        g, r = gen[k], real[k]
        gm, rm = np.nanmean(g) if np.isfinite(g).any() else np.nan, np.nanmean(r) if np.isfinite(r).any() else np.nan
        gs, rs = np.nanstd(g) if np.isfinite(g).any() else np.nan, np.nanstd(r) if np.isfinite(r).any() else np.nan
        w1 = wasserstein1(g, r)
        rows[k] = {"generated_mean": float(gm), "generated_std": float(gs), "real_mean": float(rm),
                   "real_std": float(rs), "gap": float((gm - rm) / rs) if rs > 0 else float("nan"),
                   "w1": w1, "w1_scaled": float(w1 / rs) if rs > 0 else float("nan"), "ks": ks_statistic(g, r),
                   "undefined_generated": int(np.isnan(g).sum())}
    scaled = [v["w1_scaled"] for v in rows.values() if math.isfinite(v["w1_scaled"])]
    return {"metrics": rows, "overall": float(np.mean(scaled)) if scaled else float("nan")}


# --- memorisation ----------------------------------------------------------------------------

def nearest_iou(samples: np.ndarray, train: ShardSet, chunk: int = 2048, device="cpu",
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each sample [N, P, T] bool, the highest IoU with any training window and that window's index.

    Exact: intersections are matrix products of 0/1 matrices (exact in float32 up to 2^24 cells).
    IoU of two empty rolls counts as 1.
    """
    a = torch.from_numpy(np.asarray(samples, dtype=bool).reshape(len(samples), -1)).float().to(device)
    a_n = a.sum(dim=1)
    best = torch.full((len(a),), -1.0, device=device)
    arg = torch.zeros(len(a), dtype=torch.long, device=device)
    n = len(train)
    for lo in tqdm(range(0, n, chunk), desc="nearest training window", unit="chunk", disable=not progress,
                   file=sys.stderr):
        idx = np.arange(lo, min(lo + chunk, n))
        b = torch.from_numpy(train.get(idx)[:, 0].reshape(len(idx), -1)).to(device).float()
        inter = a @ b.T  # [N, chunk]
        union = a_n[:, None] + b.sum(dim=1)[None, :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
        v, i = iou.max(dim=1)
        better = v > best
        best = torch.where(better, v, best)
        arg = torch.where(better, i + lo, arg)
    return best.cpu().numpy(), arg.cpu().numpy()


def memorisation(samples: np.ndarray, train: ShardSet, worst: int = 5, progress: bool = True, device="cpu") -> dict:
    iou, idx = nearest_iou(samples, train, progress=progress, device=device)
    order = np.argsort(-iou)[:worst]
    return {
        **{f"above_{t}": float((iou > t).mean()) for t in IOU_THRESHOLDS},
        "mean_nearest_iou": float(iou.mean()),
        "closest": [{"sample": int(i), "iou": float(iou[i]), "train_window": int(idx[i]),
                     "source": train.source_of(int(idx[i]))["path"], "offset": int(train.records["offset"][idx[i]])}
                    for i in order],
    }


# --- putting it together ----------------------------------------------------------------------

def pair_iou(rolls: np.ndarray, n: int = DIVERSITY_ROLLS) -> float:
    """How alike two rolls [N, P, T] are: the mean IoU of active cells over every pair of ``n`` rolls
    spread evenly over the N (two empty rolls count 1, as in the nearest-window search). NaN with
    fewer than two rolls. A model that draws the same notes in every sample scores near 1."""
    idx = np.unique(np.linspace(0, len(rolls) - 1, min(n, len(rolls))).round().astype(np.int64))
    if len(idx) < 2:
        return float("nan")
    x = torch.from_numpy(np.ascontiguousarray(rolls[idx]).reshape(len(idx), -1)).float()
    inter = x @ x.T  # exact: counts below 2**24
    cells = x.sum(1)
    union = cells[:, None] + cells[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))
    i, j = torch.triu_indices(len(idx), len(idx), 1)
    return float(iou[i, j].double().mean())


SPLIT_WORDS = {"val": "validation", "train": "training"}


def same_meter(val: ShardSet, meter: tuple[int, int]) -> np.ndarray:
    """Which windows of the split are in ``meter`` (numerator, denominator); refuses a meter with none."""
    r = val.records
    mask = val.in_meter(*meter)
    if not mask.any():
        counts = Counter(f"{n}/{d}" for n, d in zip(r["ts_num"].tolist(), r["ts_den"].tolist()))
        have = ", ".join(f"{m} ({c})" for m, c in counts.most_common())
        raise UserError(f"{val.root}: no {SPLIT_WORDS[val.split]} window in {meter[0]}/{meter[1]} to compare with "
                        f"(its meters: {have or 'none'})")
    return mask


def reference_in_meter(shards: ShardSet, meter: tuple[int, int] | None,
                       progress: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The windows of a split in ``meter`` (all for None) and their cached per-window metrics."""
    mask = same_meter(shards, meter) if meter is not None else np.ones(len(shards), bool)
    return mask, {k: v[mask] for k, v in reference_metrics(shards.root, shards.split, progress).items()}


def evaluate_rolls(rolls: np.ndarray, root, bar, progress: bool = True, memo: bool = True,
                   per_roll: bool = False, meter: tuple[int, int] | None = None, device="cpu",
                   split: str = "val") -> dict:
    """Metrics of rolls [N, C, P, T] against the real windows of ``root``'s ``split`` (the validation
    windows; "train" to choose a checkpoint without looking at them), plus memorisation
    (of channel 0: the sustain of the melody when the rolls have parts, which a conditional model
    draws; its accompaniment is copied from real windows).

    ``meter``: the generated rolls are all in this meter, so they are compared with the validation
    windows in it only (bar metrics of 4/4 samples against 6/8 jigs would measure the meter, not
    the model); None: with every window (rolls of mixed meters, each scored with its own ``bar``).
    ``per_roll``: also the value of every metric for every roll, under "per_roll" (arrays, not JSON)."""
    val = ShardSet(root, split)
    gen = roll_metrics(rolls, val.spec, bar)
    mask, real = reference_in_meter(val, meter, progress)
    result = {"samples": int(len(rolls)), "split": split, "real_windows": int(len(next(iter(real.values())))),
              "meter": f"{meter[0]}/{meter[1]}" if meter else "each window's own", **compare(gen, real)}
    # beside the overall figure, which compares windows one at a time: are the samples alike? (channel 0, as below)
    real_rolls = val.get(np.nonzero(mask)[0][np.unique(np.linspace(0, mask.sum() - 1, DIVERSITY_ROLLS).astype(np.int64))])
    result["diversity"] = {"generated_pair_iou": pair_iou(rolls[:, 0].astype(bool)),
                           "real_pair_iou": pair_iou(np.asarray(real_rolls)[:, 0].astype(bool))}
    structure = structure_metrics(rolls, val.spec, bar)  # beside the overall figure, not in it
    result["structure"] = compare(structure, {k: real[f"structure/{k}"] for k in structure})["metrics"]
    if per_roll:
        result["per_roll"] = {"generated": gen, "real": real}
    if memo:
        result["memorisation"] = memorisation(rolls[:, 0], ShardSet(root, "train", verify=False), progress=progress,
                                              device=device)
    return result


def harmony(melody: np.ndarray, accompaniment: np.ndarray, spec: RollSpec) -> dict:
    """Mean two-part metrics (chord-tone rate, tonal distance) of melodies over accompaniments [N, P, T]."""
    out = {}
    for k, f in PART_METRICS.items():
        v = f(melody, accompaniment, low=spec.low, r=spec.steps_per_beat)
        out[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        out[f"{k}_undefined"] = int(np.isnan(v).sum())
    return out


def melody_of(rolls: np.ndarray, spec: RollSpec) -> np.ndarray:
    """The melody [N, P, T] of rolls [N, C, P, T]: part 0, or the upper voice (skyline) of a one-part roll."""
    return split_parts(rolls, spec)[0] if spec.parts > 1 else split_voices(spec.sustain(np.asarray(rolls, bool)))[0]


def conditioning(rolls: np.ndarray, real: np.ndarray, spec: RollSpec, against=None, control=None) -> dict:
    """A conditional model's melodies (``rolls``, over the accompaniment of the real windows ``real``)
    against the real melodies of the same windows; ``control``: its melodies drawn with the same
    noise over another window's accompaniment, scored against these windows' (a model that uses
    its condition scores lower there); and another model's melodies (``against``: (name, rolls,
    spec)) over the same accompaniment and, when it has parts, over its own."""
    melody, acc = split_parts(real, spec)
    rows = {"real melodies": harmony(melody, acc, spec),
            "conditional model": harmony(split_parts(rolls, spec)[0], acc, spec)}
    if control is not None:
        rows["conditional model, drawn over other windows' chords (control)"] = harmony(
            split_parts(control, spec)[0], acc, spec)
    if against is not None:
        name, other, other_spec = against
        rows[f"{name}: its melodies over the same chords"] = harmony(melody_of(other, other_spec), acc, spec)
        if other_spec.parts > 1:
            rows[f"{name}: over its own accompaniment"] = harmony(*split_parts(other, other_spec), other_spec)
    return {"windows": int(len(real)), "rows": rows}


def encode_midi_folder(folder, spec: RollSpec, progress: bool = True) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Every MIDI (or pianoroll .npz) file below ``folder`` as non-overlapping windows of the spec; bad files
    named and skipped. Files whose names differ only in their suffix count once, the first that encodes in
    name order (x.mid before x.npz): `generate --format mid npz` writes every sample twice, and scoring
    both would weigh it double and pair it with its own copy. Returns the rolls, their bar lengths, the
    skipped files with reasons, and the twins left out."""
    files = find_midi_files([folder])
    if not files:
        raise UserError(f"{folder}: no MIDI (.mid, .midi, .kar) or .npz files")
    opt = WindowOptions(hop=spec.steps, min_cells=1)
    rolls, bars, skipped, twins, encoded = [], [], [], [], set()
    c, p, t = spec.shape
    for i, f in enumerate(tqdm(files, desc="encode", unit="file", disable=not progress, file=sys.stderr)):
        if os.path.splitext(f)[0] in encoded:
            twins.append(f)
            continue
        res = convert_file(f, i, "val", spec, opt)
        if res.error:  # a broken MIDI file leaves its .npz twin in
            skipped.append({"path": str(f), "reason": res.error})
            print(f"skip {f}: {res.error}", file=sys.stderr)
            continue
        encoded.add(os.path.splitext(f)[0])
        rolls.append(np.unpackbits(res.packed, axis=1, count=c * p * t).reshape(-1, c, p, t))
        bars.append(steps_per_bar(res.records["ts_num"], res.records["ts_den"], spec.steps_per_beat))
    if not rolls:
        raise UserError(f"{folder}: no file could be encoded ({len(skipped)} skipped)")
    if twins:
        print(f"left out {len(twins)} file(s) named like a scored one, such as {twins[0]}: each tune scored once",
              file=sys.stderr)
    return np.concatenate(rolls), np.concatenate(bars), skipped, twins


# --- distances in the feature network's space (the headline figures) ---------------------------

FEATURE_SIZE = 200  # generated and real windows per figure: about what the bundled 4/4 validation split holds
BOOTSTRAP_ROUNDS = 200


def feature_figures(rolls: np.ndarray, root, meter: tuple[int, int] | None, size: int = FEATURE_SIZE,
                    network=None, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0, split: str = "val",
                    floor: bool = True) -> dict:
    """KD and FD (each {value, low, high}), precision and recall of ``size`` generated rolls against
    ``size`` real windows of ``split`` (in ``meter``; every window for None), and the same of ``size``
    training windows against those real ones: the real floor (kd_floor, ...). UserError (one line) where
    no feature network fits or there are too few rolls or windows for ``size``. ``network``: a file, a
    loaded FeatureNet, or None (the one beside the shards, else the shipped one)."""
    from .features import FeatureNet, distances, find_network, held_out, shard_digest

    real_set, train = ShardSet(root, split, verify=False), ShardSet(root, "train", verify=False)
    if isinstance(network, FeatureNet):  # loaded once by the caller (training's scored steps)
        net, line = network, f"features: {network.path}"
    else:
        net, line = find_network(root, real_set.spec, real_set.manifest, network)
    where = f" in {meter[0]}/{meter[1]}" if meter else ""
    pools = {}
    own = net.info.get("train_digest") == shard_digest(train.manifest)  # then its floor: the files it never saw
    for name, shards in (("real", real_set), ("floor", train))[: 2 if floor else 1]:
        keep = shards.in_meter(*meter) if meter else np.ones(len(shards), bool)
        if name == "floor" and own:
            keep &= held_out(shards, net.info.get("holdout", 5))
        pool = np.flatnonzero(keep)
        if len(pool) < size:
            held = " from the files the feature network held out" if name == "floor" and own else ""
            raise UserError(f"{shards.root}: {len(pool)} {SPLIT_WORDS[shards.split]} windows{where}{held}, fewer than "
                            f"the sample size {size} of the feature distances (--feature-size)")
        pools[name] = shards.get(np.sort(np.random.default_rng(seed).choice(pool, size, replace=False)))
    if len(rolls) < size:
        raise UserError(f"{len(rolls)} samples, fewer than the sample size {size} of the feature distances "
                        f"(--num at least {size}, or --feature-size)")
    feats = {k: net.features(v) for k, v in (("gen", rolls[:size]), *pools.items())}
    return {"features": {"network": line, "size": size, "rounds": rounds, "split": split},
            **distances(feats["gen"], feats["real"], feats.get("floor"), rounds, seed)}
