"""Shards on disk: bit-packed windows that np.memmap reads directly, plus a JSON manifest.

Layout of a shard set folder:
    manifest.json        format version, spec, counts, sources, per-window records, checksums
    train-00000.bin ...  windows of the train split, each ceil(C*P*T/8) bytes (np.packbits)
    val-00000.bin ...    windows of the validation split

Bit-packing costs almost nothing to read (np.unpackbits runs at memory speed) and takes
8x less disk than uint8; scripts/bench_data.py measures both. The manifest is written
last, so a folder without one is an unfinished set and is refused.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .cli import UserError, atomic_write_bytes
from .spec import RollSpec

FORMAT = "apollogan-shards"
VERSION = 1
SPLITS = ("train", "val")
WINDOW_FIELDS = ("source", "offset", "transpose", "shift", "ts_num", "ts_den")


def packed_size(spec: RollSpec) -> int:
    c, p, t = spec.shape
    return (c * p * t + 7) // 8


class ShardWriter:
    """Streams windows of one split into shard files of at most ``shard_windows`` windows."""

    def __init__(self, root: Path, split: str, spec: RollSpec, shard_windows: int = 8192):
        self.root, self.split, self.spec = Path(root), split, spec
        self.shard_windows = shard_windows
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shards: list[dict] = []
        self.records = {k: [] for k in WINDOW_FIELDS}

    def add(self, packed: np.ndarray, records: dict) -> None:
        """packed: uint8 [N, packed_size]; records: one array of N values per WINDOW_FIELDS."""
        for k in WINDOW_FIELDS:
            self.records[k].extend(np.asarray(records[k]).tolist())
        self.buffer.append(packed)
        self.buffered += len(packed)
        while self.buffered >= self.shard_windows:
            self._flush(self.shard_windows)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buffer) if self.buffer else np.zeros((0, packed_size(self.spec)), np.uint8)
        out, rest = data[:n], data[n:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)
        name = f"{self.split}-{len(self.shards):05d}.bin"
        raw = np.ascontiguousarray(out).tobytes()
        atomic_write_bytes(self.root / name, raw)
        self.shards.append({"file": name, "windows": int(len(out)), "sha256": hashlib.sha256(raw).hexdigest()})

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)


def write_manifest(root: Path, manifest: dict) -> None:
    """Indented for reading, except the per-window columns, which stay on one line each."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "windows"}, indent=1, sort_keys=True)
    cols = ",\n  ".join(f'"{s}": ' + json.dumps(manifest["windows"][s], separators=(",", ":"), sort_keys=True)
                         for s in SPLITS)
    text = head[:-2] + ',\n "windows": {\n  ' + cols + "\n }\n}\n"
    atomic_write_bytes(Path(root) / "manifest.json", text.encode())


def read_manifest(root) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        hint = "" if Path(root).is_dir() else " (folder does not exist)"
        raise UserError(f"{path}: no manifest; not a finished shard set{hint} - run `python -m apollogan.preprocess`")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable manifest: {e}") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise UserError(f"{path}: format {m.get('format')!r} version {m.get('version')!r}, "
                        f"expected {FORMAT!r} version {VERSION}")
    return m


class ShardSet:
    """One split of a shard set, memory-mapped. ``get(indices)`` returns uint8 [n, C, P, T]."""

    def __init__(self, root, split: str = "train", spec: RollSpec | None = None, verify: bool = True):
        if split not in SPLITS:
            raise UserError(f"split must be one of {SPLITS}, not {split!r}")
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.spec = RollSpec.from_dict(self.manifest["spec"])
        if spec is not None and spec != self.spec:
            diff = {k: (v, getattr(self.spec, k)) for k, v in spec.to_dict().items() if getattr(self.spec, k) != v}
            raise UserError(f"{self.root / 'manifest.json'}: spec mismatch, asked for / shards have: "
                            + ", ".join(f"{k}={a}/{b}" for k, (a, b) in diff.items()))
        self.split = split
        self.nbytes = packed_size(self.spec)
        self.records = {k: np.asarray(v, dtype=np.int64) for k, v in self.manifest["windows"][split].items()}
        self.sources = self.manifest["sources"]
        self.maps = []
        for sh in self.manifest["shards"][split]:
            path = self.root / sh["file"]
            if not path.is_file():
                raise UserError(f"{path}: missing shard")
            if path.stat().st_size != sh["windows"] * self.nbytes:
                raise UserError(f"{path}: size {path.stat().st_size} bytes, manifest says "
                                f"{sh['windows']} windows of {self.nbytes} bytes")
            if verify and _sha256(path) != sh["sha256"]:
                raise UserError(f"{path}: checksum mismatch (file changed or corrupt); preprocess again")
            self.maps.append(np.memmap(path, dtype=np.uint8, mode="r", shape=(sh["windows"], self.nbytes)))
        self.bounds = np.cumsum([0] + [len(m) for m in self.maps])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    # Memmaps would pickle as full copies; a DataLoader worker reopens the files instead.
    def __getstate__(self):
        return {"root": self.root, "split": self.split}

    def __setstate__(self, state):
        self.__init__(state["root"], state["split"], verify=False)

    def get_packed(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        if len(self.maps) == 1:
            return self.maps[0][idx]
        out = np.empty((len(idx), self.nbytes), dtype=np.uint8)
        shard = np.searchsorted(self.bounds, idx, side="right") - 1
        for s in np.unique(shard):  # one fancy-index gather per shard touched, not per window
            sel = shard == s
            out[sel] = self.maps[s][idx[sel] - self.bounds[s]]
        return out

    def get(self, indices) -> np.ndarray:
        packed = self.get_packed(indices)
        c, p, t = self.spec.shape
        return np.unpackbits(packed, axis=1, count=c * p * t).reshape(-1, c, p, t)

    def pick_indices(self, n: int, seed: int) -> np.ndarray:
        """``n`` window indices chosen with ``seed``, without repeats while the split has enough."""
        if len(self) == 0:
            raise UserError(f"{self.root}: the {self.split} split has no windows")
        return np.random.default_rng(seed).choice(len(self), n, replace=n > len(self))

    def get_in_order(self, idx) -> np.ndarray:
        """Windows ``idx`` in the order given, read in file order."""
        idx = np.asarray(idx)
        return self.get(np.sort(idx))[np.argsort(np.argsort(idx))]

    def pick(self, n: int, seed: int) -> np.ndarray:
        """``n`` windows chosen with ``seed`` (see pick_indices), uint8 [n, C, P, T]."""
        return self.get_in_order(self.pick_indices(n, seed))

    def in_meter(self, num: int, den: int) -> np.ndarray:
        """Which windows are in the time signature num/den (bool per window)."""
        return (self.records["ts_num"] == num) & (self.records["ts_den"] == den)

    def source_of(self, i: int) -> dict:
        return self.sources[int(self.records["source"][i])]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
