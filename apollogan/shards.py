"""Shards on disk: bit-packed windows that np.memmap reads directly, plus a JSON manifest.

Layout of a shard set folder (docs/formats.md describes every field):
    manifest.json        format version, spec, options, counts, statistics, checksums; small
    train-00000.bin ...  windows of the train split, each ceil(C*P*T/8) bytes (np.packbits)
    val-00000.bin ...    windows of the validation split
    train-windows.npy    one record per train window (source, offset, transpose, shift, meter)
    val-windows.npy      the same for the validation split
    sources.jsonl        one line per converted file: path, split, windows, tempo, steps, notes
    skipped.jsonl        one line per skipped file: path and reason

Bit-packing costs almost nothing to read (np.unpackbits runs at memory speed) and takes
8x less disk than uint8; scripts/bench_data.py measures both. Everything that grows with
the corpus streams to disk as it is made, so preprocessing memory stays flat however many
files there are. The manifest is written last, so a folder without one is an unfinished set
and is refused.

Preprocessing into an existing set builds the new one beside it under other names (``train-g1-00000.bin``,
``g1-sources.jsonl``, ...: the manifest's ``generation``), replaces it by writing its manifest, and only
then removes the files the old manifest listed; nothing else in the folder is ever removed. A folder
that is neither empty nor a shard set is refused (apollogan/data.py, ``claim_out``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .cli import UserError, atomic_write_bytes
from .spec import RollSpec

FORMAT = "apollogan-shards"
VERSION = 2  # 1 kept the per-window records and the sources inside manifest.json
SPLITS = ("train", "val")
WINDOW_FIELDS = ("source", "offset", "transpose", "shift", "ts_num", "ts_den")
RECORD_DTYPE = np.dtype([(k, "<i4") for k in WINDOW_FIELDS])
SOURCES, SKIPPED = "sources.jsonl", "skipped.jsonl"


def packed_size(spec: RollSpec) -> int:
    c, p, t = spec.shape
    return (c * p * t + 7) // 8


class ShardWriter:
    """Streams windows of one split into shard files of at most ``shard_windows`` windows, and
    their records into ``SPLIT-windows.npy``, as they come: memory holds one file's windows."""

    def __init__(self, root: Path, split: str, spec: RollSpec, shard_windows: int = 8192, tag: str = ""):
        self.root, self.split, self.spec, self.tag = Path(root), split, spec, tag  # tag: a rebuild's file names
        self.shard_windows = shard_windows
        self.shards: list[dict] = []
        self.windows = 0
        self._file = self._tmp = self._hash = None  # the open shard, under a temporary name
        self._in_shard = 0  # windows written to it
        self.record_file = f"{split}-{tag}windows.npy"
        self._raw, self._raw_path = _temporary(self.root, f"{split}-windows.raw")

    def add(self, packed: np.ndarray, records: np.ndarray) -> None:
        """packed: uint8 [N, packed_size]; records: [N] of RECORD_DTYPE."""
        if records.dtype != RECORD_DTYPE or len(records) != len(packed):
            raise ValueError(f"records must be [{len(packed)}] of RECORD_DTYPE, got {records.dtype} [{len(records)}]")
        self._raw.write(records.tobytes())
        self.windows += len(packed)
        while len(packed):
            if self._file is None:
                self._file, self._tmp = _temporary(self.root, self._shard_name())
                self._hash, self._in_shard = hashlib.sha256(), 0
            take = packed[: self.shard_windows - self._in_shard]
            data = np.ascontiguousarray(take).tobytes()
            self._file.write(data)
            self._hash.update(data)
            self._in_shard += len(take)
            packed = packed[len(take):]
            if self._in_shard == self.shard_windows:
                self._finish_shard()

    def _shard_name(self) -> str:
        return f"{self.split}-{self.tag}{len(self.shards):05d}.bin"

    def _finish_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        name = self._shard_name()
        os.replace(self._tmp, self.root / name)
        self.shards.append({"file": name, "windows": self._in_shard, "sha256": self._hash.hexdigest()})
        self._file = None

    def close(self) -> dict:
        """Finish the last shard and write the records file; returns the records' manifest entry."""
        if self._file is not None:
            self._finish_shard()
        self._raw.close()
        header = {"descr": np.lib.format.dtype_to_descr(RECORD_DTYPE), "fortran_order": False,
                  "shape": (self.windows,)}
        path = self.root / self.record_file
        f, tmp = _temporary(self.root, path.name)
        with f, open(self._raw_path, "rb") as raw:  # copied in blocks, never all in memory
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(raw, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._raw_path.unlink(missing_ok=True)
        return {"file": self.record_file, "windows": self.windows, "sha256": _sha256(path)}

    def discard(self) -> None:
        """Remove what an unfinished writer wrote: its records so far, its open shard and the shards
        it finished (a set without a manifest is unusable anyway)."""
        self._raw.close()
        self._raw_path.unlink(missing_ok=True)
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = None
        for sh in self.shards:
            (self.root / sh["file"]).unlink(missing_ok=True)
        self.shards = []


class JsonLines:
    """Appends one JSON object per line to ``root/name``, through a temporary name until closed."""

    def __init__(self, root: Path, name: str):
        self.path = Path(root) / name
        self._f, self.tmp = _temporary(Path(root), name)
        self.count = 0

    def add(self, obj: dict) -> None:
        self._f.write((json.dumps(obj, sort_keys=True) + "\n").encode())
        self.count += 1

    def close(self) -> dict:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        return {"file": self.path.name, "lines": self.count, "sha256": _sha256(self.path)}

    def discard(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)


def _temporary(root: Path, name: str):
    """(binary file, path) of a new file with a unique hidden name beside ``root/name``: two runs
    writing one folder never write into each other's files."""
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    return os.fdopen(fd, "wb", buffering=1 << 20), Path(tmp)  # a large buffer: windows come 2 KiB at a time


def read_lines(root, entry: dict) -> list[dict]:
    """The objects of a JSON-lines file of a shard set (its manifest entry)."""
    path = Path(root) / entry["file"]
    try:
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable: {e}") from None
    if len(rows) != entry["lines"]:
        raise UserError(f"{path}: {len(rows)} lines, the manifest says {entry['lines']}; preprocess again")
    return rows


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own digest: an edit to the spec (or anything else)
    that keeps the shards' sizes is caught as surely as a changed shard."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(root: Path, manifest: dict) -> None:
    manifest = {**manifest, "digest": manifest_digest(manifest)}
    atomic_write_bytes(Path(root) / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _check_manifest(m: dict, path: Path) -> None:
    """The manifest's structure, in one line where it is wrong: the keys and types every reader relies on,
    and file names that stay inside the set's folder."""
    def bad(what):
        raise UserError(f"{path}: {what}; preprocess again")

    if m.get("digest") is not None and m["digest"] != manifest_digest(m):
        bad("edited since it was written (its digest does not match)")
    for key, typ in (("spec", dict), ("shards", dict), ("records", dict), ("counts", dict)):
        if not isinstance(m.get(key), typ):
            bad(f"{key!r} is {'missing' if key not in m else 'not a ' + typ.__name__}")
    try:
        RollSpec.from_dict(m["spec"])
    except (TypeError, ValueError) as e:
        bad(f"its spec is not valid ({e})")

    def plain(name, where):
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            bad(f"{where}: {name!r} is not a file name inside the set's folder")
    for split, shards in m["shards"].items():
        if not isinstance(shards, list):
            bad(f"shards.{split} is not a list")
        for i, sh in enumerate(shards):
            if not isinstance(sh, dict) or not isinstance(sh.get("windows"), int) or not isinstance(sh.get("sha256"), str):
                bad(f"shards.{split}[{i}] needs file, windows and sha256")
            plain(sh.get("file"), f"shards.{split}[{i}]")
        rec = m["records"].get(split)
        if not isinstance(rec, dict) or not isinstance(rec.get("windows"), int) or not isinstance(rec.get("sha256"), str):
            bad(f"records.{split} needs file, windows and sha256")
        plain(rec.get("file"), f"records.{split}")
    for key in ("sources", "skipped"):
        if isinstance(m.get(key), dict):
            plain(m[key].get("file"), key)
    tunes = m.get("tunes")
    if tunes is not None:  # a benchmark set's whole tunes
        if not isinstance(tunes, dict):
            bad("'tunes' is not a dict")
        for split, e in tunes.items():
            if not isinstance(e, dict) or not isinstance(e.get("tunes"), int) or not isinstance(e.get("sha256"), str):
                bad(f"tunes.{split} needs file, tunes, frames and sha256")
            plain(e.get("file"), f"tunes.{split}")


def listed_files(manifest: dict) -> set[str]:
    """The files a shard set's manifest names (shards, records, file lists): all of it that may be removed."""
    names = {sh.get("file") for split in (manifest.get("shards") or {}).values() if isinstance(split, list)
             for sh in split if isinstance(sh, dict)}
    names |= {e.get("file") for e in (manifest.get("records") or {}).values() if isinstance(e, dict)}
    names |= {manifest[k].get("file") for k in ("sources", "skipped") if isinstance(manifest.get(k), dict)}
    names |= {e.get("file") for e in (manifest.get("tunes") or {}).values() if isinstance(e, dict)}
    return {n for n in names if isinstance(n, str) and n and Path(n).name == n and n not in (".", "..")}


def read_manifest(root) -> dict:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        hint = "" if Path(root).is_dir() else " (folder does not exist)"
        raise UserError(f"{path}: no manifest; not a finished shard set{hint} - run `python -m apollogan.preprocess`")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable manifest: {e}") from None
    if not isinstance(m, dict):
        raise UserError(f"{path}: not a shard set's manifest (a JSON {type(m).__name__}, not a mapping)")
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        older = " (an older apollogan's; run `python -m apollogan.preprocess` again)" \
            if m.get("format") == FORMAT and isinstance(m.get("version"), int) and m["version"] < VERSION else ""
        raise UserError(f"{path}: format {m.get('format')!r} version {m.get('version')!r}, "
                        f"expected {FORMAT!r} version {VERSION}{older}")
    _check_manifest(m, path)
    return m


def is_current(root) -> bool:
    """Whether ``root`` holds a finished shard set this version reads."""
    try:
        read_manifest(root)
        return True
    except UserError:
        return False


class ShardSet:
    """One split of a shard set, memory-mapped. ``get(indices)`` returns uint8 [n, C, P, T]."""

    def __init__(self, root, split: str = "train", spec: RollSpec | None = None, verify: bool = True):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if split not in self.manifest["shards"]:  # "test": a benchmark file's set (apollogan/benchmark.py)
            raise UserError(f"{self.root}: no {split} split (it has {', '.join(self.manifest['shards'])})")
        self.spec = RollSpec.from_dict(self.manifest["spec"])
        if spec is not None and spec != self.spec:
            diff = {k: (v, getattr(self.spec, k)) for k, v in spec.to_dict().items() if getattr(self.spec, k) != v}
            raise UserError(f"{self.root / 'manifest.json'}: spec mismatch, asked for / shards have: "
                            + ", ".join(f"{k}={a}/{b}" for k, (a, b) in diff.items()))
        self.split = split
        self.nbytes = packed_size(self.spec)
        self.records = self._read_records(verify)
        self._sources = None
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
        if len(self) != len(self.records["offset"]):
            raise UserError(f"{self.root}: {len(self)} {split} windows in the shards, "
                            f"{len(self.records['offset'])} records; preprocess again")

    def _read_records(self, verify: bool) -> dict[str, np.ndarray]:
        entry = self.manifest["records"][self.split]
        path = self.root / entry["file"]
        if verify and path.is_file() and _sha256(path) != entry["sha256"]:
            raise UserError(f"{path}: checksum mismatch (file changed or corrupt); preprocess again")
        try:
            rows = np.load(path)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable window records: {e}") from None
        if rows.dtype != RECORD_DTYPE or rows.shape != (entry["windows"],):
            raise UserError(f"{path}: records {rows.dtype} {rows.shape}, the manifest says {entry['windows']}; "
                            "preprocess again")
        return {k: rows[k].astype(np.int64) for k in WINDOW_FIELDS}

    @property
    def sources(self) -> list[dict]:
        """One dict per converted file (path, split, windows, tempo, steps, notes), read on first use."""
        if self._sources is None:
            self._sources = read_lines(self.root, self.manifest["sources"])
        return self._sources

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
