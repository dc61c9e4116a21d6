"""Shard writing and reading, the manifest, determinism, splits, augmentation and the loader."""
import json
import re
import shutil

import numpy as np
import pytest

from apollogan.cli import UserError, find_midi_files
from apollogan.data import WindowOptions, default_workers, preprocess
from apollogan.midi import notes_to_roll, read_song
from apollogan.shards import RECORD_DTYPE, ShardSet, read_lines
from apollogan.spec import RollSpec

SPEC = RollSpec()


def build(midi_dir, out, spec=SPEC, **opt):
    opt.setdefault("val_fraction", 0.3)
    return preprocess(find_midi_files([midi_dir]), out, spec, WindowOptions(**opt), progress=False)


def test_windows_read_back_equal_the_song_roll(midi_dir, tmp_path):
    m = build(midi_dir, tmp_path / "c", hop=64)
    for split in ("train", "val"):
        s = ShardSet(tmp_path / "c", split)
        assert len(s) == m["counts"]["windows"][split] > 0
        x = s.get(np.arange(len(s)))
        assert x.dtype == np.uint8 and x.shape == (len(s), 1, 64, 256)
        for i in range(len(s)):
            src = s.source_of(i)
            song = read_song(src["path"], SPEC)
            off = int(s.records["offset"][i])
            assert np.array_equal(x[i], notes_to_roll(song.notes, 256, SPEC, offset=off))


def test_split_is_by_file_and_manifest_records_windows(midi_dir, tmp_path):
    root = tmp_path / "c"
    m = build(midi_dir, root)
    sets = {s: ShardSet(root, s) for s in ("train", "val")}
    sources = read_lines(root, m["sources"])
    by_split = {s: {sources[i]["path"] for i in sets[s].records["source"]} for s in sets}
    assert by_split["train"] and by_split["val"] and not by_split["train"] & by_split["val"]
    assert all(sources[i]["split"] == "train" for i in sets["train"].records["source"])
    assert m["spec"] == SPEC.to_dict() and m["version"] == 2
    assert len(sources) == m["counts"]["converted"] == m["sources"]["lines"] and read_lines(root, m["skipped"]) == []
    for s in sets:
        assert sum(sh["windows"] for sh in m["shards"][s]) == len(sets[s].records["offset"]) == len(sets[s])
        assert all(len(sh["sha256"]) == 64 for sh in m["shards"][s])


def test_window_records_are_binary_columns_beside_the_shards(midi_dir, tmp_path):
    root = tmp_path / "c"
    m = build(midi_dir, root, hop=32, transpose=1, time_shifts=(2,), val_fraction=0.0)
    rows = np.load(root / "train-windows.npy")  # readable without apollogan
    assert rows.dtype == RECORD_DTYPE and len(rows) == m["counts"]["windows"]["train"] == m["records"]["train"]["windows"]
    s = ShardSet(root)
    for k in RECORD_DTYPE.names:
        assert np.array_equal(s.records[k], rows[k])
    assert set(np.unique(rows["shift"])) == {0, 2} and (rows["transpose"] != 0).any()
    assert (rows["offset"][rows["shift"] == 0] % 16 == 0).all()  # the 4/4 fixtures' bar lines, 16 steps apart
    text = (root / "manifest.json").read_text()
    assert len(text) < 4000 and '"offset"' not in text  # the manifest holds no per-window column
    assert not list(root.glob(".*"))  # no temporary file left behind
    np.save(root / "train-windows.npy", rows[:-1])  # one record short
    with pytest.raises(UserError, match="train-windows.npy: checksum mismatch"):
        ShardSet(root)
    with pytest.raises(UserError, match="train-windows.npy: records"):
        ShardSet(root, verify=False)


def test_small_shards_span_files_and_gather_across_them(midi_dir, tmp_path):
    build(midi_dir, tmp_path / "a", hop=32)
    preprocess(find_midi_files([midi_dir]), tmp_path / "b", SPEC, WindowOptions(hop=32, val_fraction=0.3),
               shard_windows=3, progress=False)
    a, b = ShardSet(tmp_path / "a"), ShardSet(tmp_path / "b")
    assert len(b.maps) > 2 and len(a) == len(b)
    idx = np.array([len(a) - 1, 0, 4, 3, 4])
    assert np.array_equal(a.get(idx), b.get(idx))


def test_preprocessing_is_deterministic_across_runs_and_workers(midi_dir, tmp_path):
    opts = dict(transpose=2, time_shifts=(-1, 2))
    build(midi_dir, tmp_path / "a", **opts)
    # batch 2: three batches of files, each queued to the workers while the one before is written
    for out, workers, batch in (("b", 2, 512), ("c", 0, 512), ("d", 2, 2)):  # 0 reads as one worker
        preprocess(find_midi_files([midi_dir]), tmp_path / out, SPEC, WindowOptions(val_fraction=0.3, **opts),
                   workers=workers, progress=False, batch=batch)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    for out in ("b", "c", "d"):
        assert names == sorted(p.name for p in (tmp_path / out).iterdir())
        for n in names:
            assert (tmp_path / "a" / n).read_bytes() == (tmp_path / out / n).read_bytes(), n


def test_default_workers_one_per_core_but_64_files_each(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert default_workers(10) == 1  # too few files to be worth a second process
    assert default_workers(130) == 2
    assert default_workers(100_000) == 4
    monkeypatch.setattr("multiprocessing.get_all_start_methods", lambda: ["spawn"])
    assert default_workers(100_000) == 1  # workers are forked: none where there is no fork


def test_transpositions_stay_inside_and_are_recorded(midi_dir, tmp_path):
    spec = RollSpec(low=40, pitches=40)  # tight window: few shifts are legal
    build(midi_dir, tmp_path / "c", spec, transpose=3, transpose_range=12, val_fraction=0.0)
    s = ShardSet(tmp_path / "c")
    tr = s.records["transpose"]
    assert (tr != 0).any() and (tr == 0).any()
    x = s.get(np.arange(len(s)))
    for i in np.nonzero(tr)[0][:20]:
        song = read_song(s.source_of(i)["path"], spec)
        orig = notes_to_roll(song.notes, 256, spec, offset=int(s.records["offset"][i]))
        assert orig.sum() == x[i].sum()  # nothing pushed out of the window
        assert np.array_equal(np.roll(orig, int(tr[i]), axis=1), x[i])


def test_time_shifts_only_in_train(midi_dir, tmp_path):
    build(midi_dir, tmp_path / "c", time_shifts=(-2, 3))
    assert set(ShardSet(tmp_path / "c", "train").records["shift"].tolist()) == {-2, 0, 3}
    assert set(ShardSet(tmp_path / "c", "val").records["shift"].tolist()) == {0}


def test_sparse_windows_are_dropped_and_counted(tmp_path):
    from conftest import write_midi

    d = tmp_path / "m"
    d.mkdir()
    write_midi(d / "sparse.mid", [(60, 0, 1), (60, 200, 201)])  # two notes in 200 beats
    write_midi(d / "dense.mid", [(60 + i % 5, i, i + 1) for i in range(200)])
    m = build(d, tmp_path / "c", min_cells=16, val_fraction=0.0)
    assert m["stats"]["windows_dropped_sparse"] > 0
    s = ShardSet(tmp_path / "c")
    assert {s.source_of(i)["path"].split("/")[-1] for i in range(len(s))} == {"dense.mid"}


def test_spec_mismatch_missing_shard_and_checksum_are_refused(midi_dir, tmp_path):
    root = tmp_path / "c"
    build(midi_dir, root)
    with pytest.raises(UserError, match="spec mismatch.*onset=True/False"):
        ShardSet(root, spec=RollSpec(onset=True))
    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    data = bytearray((bad / "train-00000.bin").read_bytes())
    data[10] ^= 0xFF
    (bad / "train-00000.bin").write_bytes(bytes(data))
    with pytest.raises(UserError, match="train-00000.bin: checksum mismatch"):
        ShardSet(bad)
    (bad / "train-00000.bin").unlink()
    with pytest.raises(UserError, match="train-00000.bin: missing shard"):
        ShardSet(bad)
    with pytest.raises(UserError, match="no manifest"):
        ShardSet(tmp_path / "nowhere")
    m = json.loads((root / "manifest.json").read_text())
    m["version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="version 99"):
        ShardSet(bad)
    m["version"] = 1
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="version 1, expected .* version 2 .*preprocess` again"):
        ShardSet(bad)


def test_rerun_replaces_old_shards(midi_dir, tmp_path):
    root = tmp_path / "c"
    build(midi_dir, root, hop=16)
    n_before = len(ShardSet(root))
    preprocess(find_midi_files([midi_dir]), root, SPEC, WindowOptions(hop=128, val_fraction=0.3),
               shard_windows=1000, progress=False)
    assert len(ShardSet(root)) < n_before


def test_batches_gather_as_uint8_with_onsets_inside_sustain(midi_dir, tmp_path):
    build(midi_dir, tmp_path / "c", RollSpec(onset=True), hop=32)
    shards = ShardSet(tmp_path / "c", spec=RollSpec(onset=True))
    idx = np.array([0, 2, 3, 7])
    x = shards.get(idx)
    assert x.shape == (4, 2, 64, 256) and x.dtype == np.uint8
    assert set(np.unique(x).tolist()) == {0, 1}
    assert np.array_equal(x[1], shards.get(np.array([2]))[0])  # one gather is the windows one by one
    # onsets are a subset of sustain, and fewer
    assert (x[:, 1] <= x[:, 0]).all() and x[:, 1].sum() < x[:, 0].sum()


def test_one_tune_in_two_formats_lands_in_one_split_and_mid_names_keep_their_split():
    import hashlib

    from apollogan.data import split_of

    for stem in ("ashover1", "jigs12", "reels_simple_chords_5", "x"):
        splits = {split_of(f"some/dir/{stem}{suffix}", 0.5) for suffix in (".mid", ".npz", ".MIDI", ".kar")}
        assert len(splits) == 1
        h = int.from_bytes(hashlib.sha1(f"{stem}.mid".encode()).digest()[:8], "big") / 2**64
        assert splits == {"val" if h < 0.5 else "train"}  # the hash of NAME.mid, as before .npz input


def test_file_list_is_normalised_and_an_unconverted_run_leaves_nothing(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "bad.mid").write_bytes(b"not midi")
    (d / "also.npz").write_bytes(b"not a zip")
    assert find_midi_files([d, str(d) + "/", f"{d}/./"]) == [f"{d}/also.npz", f"{d}/bad.mid"]
    out = tmp_path / "c"
    m = preprocess(find_midi_files([d]), out, SPEC, WindowOptions(), progress=False)
    assert m["counts"]["converted"] == 0 and sorted(m["counts"]["skipped"]) == ["not a MIDI file (no MThd header)",
                                                                              "not a pianoroll .npz file (not a zip archive)"]
    assert list(out.iterdir()) == []


def test_an_interrupted_run_leaves_no_file_behind(midi_dir, tmp_path, monkeypatch):
    import apollogan.data as pp

    calls = []

    def interrupt(args):
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return pp.convert_file(*args)

    monkeypatch.setattr(pp, "_convert_job", interrupt)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        preprocess(find_midi_files([midi_dir]), out, SPEC, WindowOptions(val_fraction=0.3), shard_windows=2,
                   progress=False)
    assert list(out.iterdir()) == []


def test_key_normalize_moves_train_files_onto_the_white_keys_and_leaves_val_files(tmp_path):
    from conftest import scale_tune, write_midi

    for name, base in (("c", 60), ("d", 62)):  # the same tune in C and a tone higher, in D
        (tmp_path / name).mkdir()
        write_midi(tmp_path / name / "tune.mid", scale_tune(96, base=base))

    def windows(name, **opt):
        out = tmp_path / f"{name}-{len(opt)}-{opt.get('val_fraction')}"
        preprocess(find_midi_files([tmp_path / name]), out, SPEC, WindowOptions(**opt), progress=False)
        split = "val" if opt.get("val_fraction") == 1 else "train"
        ss = ShardSet(out, split)
        return ss.get(np.arange(len(ss))), read_lines(out, json.loads((out / "manifest.json").read_text())["sources"])

    c, _ = windows("c", val_fraction=0)
    d, _ = windows("d", val_fraction=0)
    d_key, lines = windows("d", val_fraction=0, key_normalize=True)
    assert not np.array_equal(c, d) and np.array_equal(c, d_key) and lines[0]["key_shift"] == -2
    d_val, lines = windows("d", val_fraction=1, key_normalize=True)  # every file in val: left in D
    assert np.array_equal(d_val, d) and "key_shift" not in lines[0]


def test_two_runs_starting_at_once_preprocess_the_bundled_data_once(tmp_path):
    import subprocess
    import sys
    root = tmp_path / "nottingham"
    # each process says it is ready, waits for the other, then both look for shards at the same moment
    code = ("import sys, time, pathlib; from apollogan.data import ensure_shards; "
            f"t = pathlib.Path({str(tmp_path)!r}); (t / f'ready-{{sys.argv[1]}}').touch(); "
            "[time.sleep(0.01) for _ in range(3000) if len(list(t.glob('ready-*'))) < 2]; "
            f"ensure_shards({str(root)!r}, log=lambda m: print(m, flush=True))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("preprocessing the bundled data first" in log for log in logs) == 1, logs  # the other waited
    manifest = json.loads((root / "manifest.json").read_text())
    files = {sh["file"] for s in ("train", "val") for sh in manifest["shards"][s]}
    assert files and files == {p.name for p in root.glob("*.bin")}  # every shard named is there, no other
    assert len(ShardSet(root, "train")) > 3000 and len(ShardSet(root, "val")) > 300


def _edit(root, change, keep_digest=True):
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    if not keep_digest:
        m.pop("digest", None)  # as a set written before manifests carried one
    (root / "manifest.json").write_text(json.dumps(m))


def test_a_spec_edit_that_keeps_the_packed_size_is_caught_by_the_manifest_digest(midi_dir, tmp_path):
    root = tmp_path / "c"
    build(midi_dir, root, hop=64)
    _edit(root, lambda m: m["spec"].update(steps_per_beat=8, low=40))
    with pytest.raises(UserError, match="manifest.json: edited since it was written"):
        ShardSet(root)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("shards"), "'shards' is missing"),
    (lambda m: m.update(records=[1, 2]), "'records' is not a dict"),
    (lambda m: m["spec"].update(pitches="many"), "its spec is not valid"),
    (lambda m: m["spec"].update(colour="blue"), "its spec is not valid (unknown spec keys: ['colour'])"),
    (lambda m: m["shards"].update(train={"file": "x"}), "shards.train is not a list"),
    (lambda m: m["shards"]["train"][0].update(file="../../elsewhere.bin"), "is not a file name inside the set's folder"),
    (lambda m: m["records"]["val"].update(file="/etc/passwd"), "records.val: '/etc/passwd' is not a file name"),
])
def test_hand_edited_manifests_are_refused_in_one_line(midi_dir, tmp_path, change, message):
    root = tmp_path / "c"
    build(midi_dir, root, hop=64)
    _edit(root, change, keep_digest=False)  # no digest to catch it: the structure check must
    with pytest.raises(UserError, match=re.escape(message)):
        ShardSet(root)
    (root / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(UserError, match="not a shard set's manifest"):
        ShardSet(root)
