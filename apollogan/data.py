"""The data path: MIDI or pypianoroll .npz files -> bit-packed [C, 64, 256] windows in shards.

``preprocess`` builds a shard set (python -m apollogan.preprocess is its command line);
``ensure_shards`` builds the bundled tunes' set on first use; ``bundled_root`` and
``data_mismatch`` tie a config's data section to the shards it trains on. Reading shards is
apollogan/shards.py (ShardSet). The decisions behind each step and their measurements are in
docs/data.md; the files written are described in docs/formats.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from . import __version__
from .cli import UserError, bundled_data, find_midi_files
from .midi import DEFAULT_MAX_BEATS, MidiError, Song, key_shift, read_song, song_roll, transpose_song
from .pianoroll import NPZ_SUFFIX, read_npz_song
from .shards import (
    FORMAT,
    RECORD_DTYPE,
    SKIPPED,
    SOURCES,
    SPLITS,
    VERSION,
    JsonLines,
    ShardWriter,
    is_current,
    listed_files,
    read_manifest,
    write_manifest,
)
from .spec import RollSpec

DEFAULT_OUT = Path("chunks/nottingham")


@dataclass(frozen=True)
class WindowOptions:
    hop: int = 128  # steps between window starts (each start snaps to the next bar line)
    min_cells: int = 32  # windows with fewer active sustain cells are dropped and counted
    transpose: int = 0  # random transposed copies per train window (shifts that keep every note inside)
    transpose_range: int = 6  # largest transposition in semitones
    time_shifts: tuple = ()  # extra train copies shifted by these many steps (the original "layback")
    val_fraction: float = 0.1
    seed: int = 0
    max_beats: int = DEFAULT_MAX_BEATS
    key_normalize: bool = False  # train files transposed onto the white keys (midi.key_shift); val files as written


@dataclass
class FileResult:
    packed: np.ndarray | None = None
    records: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    error: str | None = None


def _display_path(path: Path, cwd: str) -> str:
    """Relative to the working folder ``cwd`` when below it, so manifests do not depend on the clone's location."""
    full = os.path.normpath(os.path.join(cwd, path))  # not resolve(): a symlink loop must still get a name
    return full[len(cwd) + 1:] if full.startswith(cwd + os.sep) else str(path)


def split_of(path: Path, val_fraction: float) -> str:
    """By a hash of the file name: stable when files are added, and never splits one tune. The
    suffix counts as .mid, so one tune as x.mid and x.npz (or x.MIDI) lands in one split."""
    name = os.path.splitext(os.path.basename(path))[0] + ".mid"
    h = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def window_starts(song: Song, total: int, spec: RollSpec, hop: int) -> np.ndarray:
    """Bar-line starts about ``hop`` steps apart, plus one more so the tune's end is covered.

    The last window may run up to a bar past the end (that part is silent).
    """
    last = max(total - spec.steps, 0)
    bars = song.downbeats
    if len(bars) == 0:
        bars = np.arange(0, total + 1, hop)
    i = np.searchsorted(bars, np.arange(0, last + 1, hop)).tolist()  # non-decreasing
    # A handful of windows per file: plain lists beat numpy calls here.
    starts = [b for b in bars[list(dict.fromkeys(j for j in i if j < len(bars)))].tolist() if b <= last]
    if not starts or starts[-1] + spec.steps < total:
        j = int(np.searchsorted(bars, total - spec.steps))
        starts.append(int(bars[j]) if j < len(bars) else last)
    return np.array(starts, np.int64)


def _transpose(win: np.ndarray, rng: np.random.Generator, copies: int, max_shift: int):
    """Random transpositions that keep every note of each window inside the pitch window."""
    n, _, p, _ = win.shape
    active = win.any(axis=(1, 3))  # [N, P]
    lo = active.argmax(1)
    hi = p - 1 - active[:, ::-1].argmax(1)
    a, b = np.maximum(-lo, -max_shift), np.minimum(p - 1 - hi, max_shift)
    ok = b > a  # at least one non-zero shift is allowed
    pairs = []
    for _ in range(copies):
        v = rng.integers(a, np.maximum(b, a + 1))  # in [a, b-1]; skipping 0 maps it onto [a, b] \ {0}
        v = v + (v >= 0)
        pairs.append(np.stack([np.nonzero(ok)[0], v[ok]], 1))
    pairs = np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), int)
    w, v = pairs[:, 0], pairs[:, 1]
    src = np.arange(p)[None, :] - v[:, None]  # row r of the copy comes from row r - v
    out = win[w[:, None], :, np.clip(src, 0, p - 1), :].transpose(0, 2, 1, 3)  # [M, C, P, T]
    out &= ((src >= 0) & (src < p))[:, None, :, None]
    return out, w, v


def read_input(path: Path, spec: RollSpec, max_beats: int = DEFAULT_MAX_BEATS) -> Song:
    """A MIDI file, or a pypianoroll Multitrack .npz, onto the spec's grid (MidiError: why not)."""
    if str(path)[-4:].lower() == NPZ_SUFFIX:
        return read_npz_song(path, spec, max_beats)
    return read_song(path, spec, max_beats)


def convert_file(path: Path, index: int, split: str, spec: RollSpec, opt: WindowOptions) -> FileResult:
    """One file -> its packed windows and per-window records; errors become a reason string."""
    try:
        song = read_input(path, spec, opt.max_beats)
    except MidiError as e:
        return FileResult(error=str(e))
    key = key_shift(song.notes) if opt.key_normalize and split == "train" else 0
    song = transpose_song(song, key, spec)
    base = window_starts(song, song.steps, spec, opt.hop)
    total = int(base[-1]) + spec.steps  # past the song's end the roll is silent
    roll = song_roll(song, total, spec)
    starts, shift = base, np.zeros(len(base), np.int64)
    shifts = [s for s in opt.time_shifts if s] if split == "train" else []
    if shifts:  # shifted copies of the windows, those that stay inside the roll
        starts = np.concatenate([base] + [base + s for s in shifts])
        shift = np.repeat([0] + shifts, len(base))
        keep = (starts >= 0) & (starts <= total - spec.steps)
        starts, shift = starts[keep], shift[keep]
    # Active cells of each candidate window, before any is built: one count_nonzero per window (a
    # handful per file) is several times cheaper than a running count over every step.
    sus = roll[:1] if spec.parts == 1 else spec.sustain(roll)
    cells = [np.count_nonzero(sus[..., t:t + spec.steps]) for t in starts.tolist()]
    dense = np.array(cells, np.int64).reshape(-1) >= opt.min_cells
    starts, shift = starts[dense], shift[dense]
    # A few slices copied: much cheaper than one fancy-indexed gather for the usual handful of windows.
    win = np.empty((len(starts), *spec.shape), bool)  # [N, C, P, T]
    for k, t in enumerate(starts.tolist()):
        win[k] = roll[:, :, t:t + spec.steps]
    transpose = np.zeros(len(win), np.int64)
    if split == "train" and opt.transpose > 0 and len(win):
        rng = np.random.default_rng([opt.seed, index])
        extra, w, v = _transpose(win, rng, opt.transpose, opt.transpose_range)
        win = np.concatenate([win, extra])
        starts, shift = np.concatenate([starts, starts[w]]), np.concatenate([shift, shift[w]])
        transpose = np.concatenate([transpose, v])
    ts = song.time_signature_at(starts)
    records = np.empty(len(win), RECORD_DTYPE)  # one array: cheap to send back from a worker
    records["source"], records["offset"], records["transpose"] = index, starts, transpose
    records["shift"], records["ts_num"], records["ts_den"] = shift, ts[:, 0], ts[:, 1]
    info = {"tempo": song.tempo, "steps": song.steps, "notes": int(len(song.notes))} | ({"key_shift": key} if key else {})
    stats = dict(song.stats, windows_dropped_sparse=int((~dense).sum()))
    return FileResult(np.packbits(win.reshape(len(win), math.prod(spec.shape)), axis=1), records, info, stats)


def _convert_job(args):
    try:
        return convert_file(*args)
    except Exception as e:  # an unforeseen file must not stop the others; it is named and counted
        return FileResult(error=f"unexpected error: {type(e).__name__}: {e}")


class _Silent:
    """The progress bar's interface without a bar (--quiet): importing tqdm alone takes 3% of a run."""

    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass

    @staticmethod
    def write(line, file=None):
        print(line, file=file)


def _progress(total: int, show: bool):
    if not show:
        return _Silent()
    from tqdm import tqdm
    return tqdm(total=total, unit="file", desc="preprocess", file=sys.stderr)


def _worker_init() -> None:
    """Workers leave Ctrl-C to the parent, which stops them: no traceback from each of them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for work nobody will read (an interrupt or an error), killing its
    workers: a finished run has none busy, an interrupted one must not wait for them."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    queue = getattr(pool, "_call_queue", None)
    if queue is not None:  # its feeder thread may be blocked on a pipe no worker will read: never wait for it
        queue.cancel_join_thread()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(OSError, ValueError):
            p.kill()
    for p in procs:
        with contextlib.suppress(OSError, ValueError):
            p.join(5)


def _convert_many(jobs: list) -> list:
    return [_convert_job(j) for j in jobs]


def default_workers(files: int) -> int:
    """One worker per usable core, but only as many as get 64 files each: fewer files take longer to
    hand out than to convert."""
    if "fork" not in mp.get_all_start_methods():  # workers are forked (Windows has no fork)
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, files // 64))


def preprocess(files: list, out: Path, spec: RollSpec, opt: WindowOptions, workers: int = 1,
               shard_windows: int = 8192, progress: bool = True, log=print, batch: int = 512) -> dict:
    """Convert ``files`` (paths or strings) into a shard set at ``out`` and return its manifest.

    Windows, their records and the per-file lines stream to disk as files finish, so memory
    stays flat however many files there are; the manifest holds only totals. Files go to the
    workers ``batch`` at a time, the next batch queued while one is written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = claim_out(out)  # the set this one replaces, once it is complete; until then it stays as it is
    generation = old.get("generation", 0) + 1 if old else 0
    tag = f"g{generation}-" if generation else ""  # a rebuild's files never overwrite the old set's
    reasons, totals, per_split = Counter(), Counter(), Counter()
    cwd = os.getcwd()
    writers, pool, parts = {}, None, []
    bar = _progress(len(files), progress)
    try:
        writers = {s: ShardWriter(out, s, spec, shard_windows, tag) for s in SPLITS}
        sources, skipped = JsonLines(out, tag + SOURCES), JsonLines(out, tag + SKIPPED)
        parts = list(writers.values()) + [sources, skipped]
        workers = max(workers, 1)
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_worker_init) \
            if workers > 1 else None
        # Bounded batches keep memory flat however many files and workers there are; the next batch is
        # queued before this one is written, so workers never wait for the writing.
        pending = deque()

        def convert(lo: int):
            chunk = [(f, lo + i, split_of(f, opt.val_fraction), spec, opt) for i, f in enumerate(files[lo:lo + batch])]
            if not pool:
                return chunk, map(_convert_job, chunk)
            # A task costs the parent about a millisecond (measured), so tasks are up to 128 files, and
            # shrink as the files run out, so that no worker is left idle at the end waiting for another.
            tasks, i = [], 0
            while i < len(chunk):
                size = max(1, min(128, (len(files) - lo - i) // (4 * workers)))
                tasks.append(chunk[i:i + size])
                i += size
            return chunk, chain.from_iterable(pool.map(_convert_many, tasks))

        def take(chunk, results):
            for (path, _, split, _, _), res in zip(chunk, results):
                bar.update()
                if res.error:
                    skipped.add({"path": _display_path(path, cwd), "reason": res.error})
                    reasons[res.error.split(":")[0]] += 1
                    bar.write(f"skip {path}: {res.error}", file=sys.stderr)
                    continue
                # records["source"] holds the file index; renumber to the index among converted files
                res.records["source"] = sources.count
                writers[split].add(res.packed, res.records)
                sources.add({"path": _display_path(path, cwd), "split": split, "windows": int(len(res.packed)), **res.info})
                per_split[split] += 1
                totals.update(res.stats)
            bar.set_postfix(windows=sum(w.windows for w in writers.values()), skipped=skipped.count, refresh=False)

        for lo in range(0, len(files), batch):
            pending.append(convert(lo))
            if len(pending) > 1 or not pool:
                take(*pending.popleft())
        while pending:
            take(*pending.popleft())
        records, files_entry = {}, {}
        if sources.count:
            records = {s: writers[s].close() for s in SPLITS}
            files_entry = {"sources": sources.close(), "skipped": skipped.close()}
        else:  # nothing converted: no set, so no file of this run stays behind
            for w in parts:
                w.discard()
    except BaseException as e:  # interrupted, or the disk full: the same, and no temporary file stays
        for w in parts:
            w.discard()
        if isinstance(e, OSError) and e.filename is None:  # a write's error names no file: say which set
            raise UserError(f"{out}: could not write the shard set ({e.strerror or e}); nothing was changed") from None
        raise
    finally:
        bar.close()
        if pool:
            _stop_workers(pool)
    manifest = {
        "format": FORMAT, "version": VERSION, "apollogan": __version__, "generation": generation,
        "spec": spec.to_dict(), "channels": spec.channel_names, "packing": "packbits",
        "options": {**opt.__dict__, "time_shifts": list(opt.time_shifts)},
        "counts": {"files": len(files), "converted": sources.count, "skipped": dict(sorted(reasons.items())),
                   "windows": {s: writers[s].windows for s in SPLITS},
                   "sources_per_split": {s: per_split[s] for s in SPLITS}},
        "stats": dict(sorted(totals.items())),
        "shards": {s: writers[s].shards for s in SPLITS},
        "records": records, **files_entry,
    }
    if records:
        write_manifest(out, manifest)  # the one moment the new set replaces the old
        for name in listed_files(old or {}) - listed_files(manifest):  # only what the old set's manifest lists
            (out / name).unlink(missing_ok=True)
    return manifest


def claim_out(out: Path) -> dict | None:
    """The manifest of the shard set at ``out`` (None: an empty folder). A folder holding anything else
    is refused in one line; temporary files of an interrupted run into it are removed."""
    entries = list(out.iterdir())
    stale = [p for p in entries if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    manifest = None
    if (out / "manifest.json").is_file():
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{out}: its manifest.json is not an apollogan shard set's; preprocess into an empty or "
                            f"new folder (nothing was changed)")
    elif len(entries) > len(stale):
        raise UserError(f"{out}: not empty and not a shard set (no manifest.json); preprocess into an empty or new "
                        f"folder (nothing was changed)")
    for p in stale:
        p.unlink(missing_ok=True)
    return manifest


def summary(m: dict) -> str:
    c, st = m["counts"], m["stats"]
    skipped = ", ".join(f"{k}: {v}" for k, v in c["skipped"].items()) or "none"
    return (f"converted {c['converted']} of {c['files']} files; skipped {c['files'] - c['converted']} ({skipped})\n"
            f"windows: train {c['windows']['train']}, val {c['windows']['val']} "
            f"(from {c['sources_per_split']['train']} / {c['sources_per_split']['val']} files); "
            f"sparse windows dropped: {st.get('windows_dropped_sparse', 0)}\n"
            f"notes: {st.get('notes', 0)}, outside the pitch window: {st.get('notes_dropped_pitch', 0)} dropped, "
            f"{st.get('notes_folded', 0)} folded; off the grid: {st.get('onsets_off_grid', 0)} onsets, "
            f"{st.get('offsets_off_grid', 0)} offsets")


def data_options(data) -> tuple[RollSpec, WindowOptions]:
    """The spec and window options a config's data section (config.DataConfig) asks for."""
    return RollSpec(onset=data.onset), WindowOptions(transpose=data.transpose, time_shifts=tuple(data.time_shifts),
                                                     key_normalize=data.key_normalize)


def bundled_root(data) -> Path:
    """Where the bundled tunes preprocessed with a data section's options live: chunks/nottingham for
    the defaults, with a suffix per option otherwise (chunks/nottingham-onset-key-t2-s4.8)."""
    tail = ("-onset" if data.onset else "") + ("-key" if data.key_normalize else "")
    tail += f"-t{data.transpose}" if data.transpose else ""
    tail += "-s" + ".".join(map(str, data.time_shifts)) if data.time_shifts else ""
    return DEFAULT_OUT.with_name(DEFAULT_OUT.name + tail)


def data_mismatch(manifest: dict, data) -> str | None:
    """How shards (their manifest) differ from what a config's data section asks for; None if they match."""
    spec, opt = data_options(data)
    have_opt = manifest.get("options", {})
    have = {"onset": bool(manifest["spec"].get("onset")), "transpose": have_opt.get("transpose", 0),
            "time_shifts": list(have_opt.get("time_shifts", [])), "key_normalize": have_opt.get("key_normalize", False)}
    want = {"onset": spec.onset, "transpose": opt.transpose, "time_shifts": list(opt.time_shifts),
            "key_normalize": opt.key_normalize}
    diff = [f"data.{k}={json.dumps(want[k])} (the shards have {json.dumps(have[k])})" for k in want if want[k] != have[k]]
    return ", ".join(diff) or None


@contextlib.contextmanager
def folder_lock(out: Path):
    """One preprocess at a time into ``out``: an advisory lock on the folder itself (created if missing),
    held until the block ends, so a second one waits instead of deleting the first's shards as stale.
    Nothing is left behind. Where there is no such lock (Windows: no fcntl; NFS and some other file
    systems refuse flock on a folder) it goes on without one, as before the lock existed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
        fd = os.open(out, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # unlocked, as above
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def ensure_shards(root: Path, data=None, log=print) -> Path:
    """The bundled data's shards at ``root``, preprocessing them with ``data``'s options (a config's data
    section; None: the defaults) first when missing or of an older format. Two runs starting at once on
    a fresh clone preprocess once: the second waits for the first's shards."""
    root = Path(root)
    if not is_current(root):
        with folder_lock(root):
            if not is_current(root):  # written by another process while this one waited
                spec, opt = data_options(data) if data is not None else (RollSpec(), WindowOptions())
                why = "an older format" if (root / "manifest.json").is_file() else "no shards"
                log(f"{why} at {root}: preprocessing the bundled data first")
                # one process: training may already hold threads or a GPU context a fork should not copy
                m = preprocess(find_midi_files([bundled_data()]), root, spec, opt)
                log(summary(m))
    read_manifest(root)
    return root
