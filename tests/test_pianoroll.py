"""pypianoroll Multitrack .npz files in and out: the same windows as the MIDI path, bar lines,
resampling, parts by track name or program, and one reason per bad file."""
import json
import warnings
import zipfile

import numpy as np
import pypianoroll
import symusic
from conftest import NOTTINGHAM, write_midi

from apollogan.data import WindowOptions, convert_file, preprocess
from apollogan.midi import read_song, roll_to_parts
from apollogan.pianoroll import (
    complete_bars,
    meters_from_bars,
    multitrack_from_midi,
    read_npz_song,
    roll_notes,
    rolls_to_multitrack,
    save_npz,
)
from apollogan.shards import ShardSet, read_lines
from apollogan.spec import RollSpec

SPEC = RollSpec()


def meters(path):
    return {(t.numerator, t.denominator) for t in symusic.Score(str(path)).time_signatures}


def same_windows(a, b):
    return not a.error and not b.error and np.array_equal(a.packed, b.packed) and \
        all(np.array_equal(a.records[k], b.records[k]) for k in ("offset", "shift", "transpose"))


def via_symusic(midi, path, resolution=24):
    """An .npz built with pypianoroll's classes and save() from the file as symusic reads it, with
    its real bar lines (pypianoroll.read puts 6/8 on the wrong grid; see the 6/8 test)."""
    multitrack_from_midi(midi, resolution).save(path)
    return path


def test_npz_from_pypianoroll_read_gives_the_midi_windows_on_4_4_tunes(tmp_path):
    tunes = [f for f in sorted(NOTTINGHAM.glob("*.mid")) if meters(f) == {(4, 4)}][:12]
    assert len(tunes) == 12
    for f in tunes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pretty_midi: meta events outside the first track
            mt = pypianoroll.read(f, resolution=24)
        npz = tmp_path / f"{f.stem}.npz"
        mt.save(npz)
        a, b = (convert_file(p, 0, "train", SPEC, WindowOptions(hop=64)) for p in (f, npz))
        assert same_windows(a, b), f.name
        assert len(a.packed) > 2  # more than the first and the last window: the bar lines went on past 0
        assert b.records["ts_num"].tolist() == [4] * len(b.packed)


def test_6_8_tunes_keep_their_bars_from_the_downbeat_array(tmp_path):
    jigs = [f for f in sorted(NOTTINGHAM.glob("*.mid")) if meters(f) == {(6, 8)}][:6]
    for f in jigs:
        npz = via_symusic(f, tmp_path / f"{f.stem}.npz")
        a, b = (convert_file(p, 0, "train", SPEC, WindowOptions(hop=64)) for p in (f, npz))
        assert same_windows(a, b), f.name
        assert set(b.records["ts_num"]) == {3} and set(a.records["ts_num"]) == {6}  # 3 beats: read as 3/4
        assert read_npz_song(npz, SPEC).tempo == read_song(f, SPEC).tempo


def test_resolution_is_resampled_to_the_grid(tmp_path):
    midi = write_midi(tmp_path / "t.mid", [(60, 0, 1), (62, 1, 1.5), (64, 1.5, 3), (65, 3.25, 4)] * 1, tpq=96)
    for res in (4, 12, 24, 48):
        song = read_npz_song(via_symusic(midi, tmp_path / f"r{res}.npz", res), SPEC)
        assert sorted(map(tuple, song.notes.tolist())) == [(60, 0, 4), (62, 4, 6), (64, 6, 12), (65, 13, 16)], res
        assert song.downbeats[:2].tolist() == [0, 16]


def test_roll_notes_bar_lines_and_meters():
    pr = np.zeros((10, 128), np.uint8)
    pr[0:3, 60] = 90
    pr[5:10, 60] = 30  # a second run of the same pitch, to the end
    pr[2:4, 40] = 1
    p, s, e = roll_notes(pr)
    assert list(zip(p.tolist(), s.tolist(), e.tolist())) == [(40, 2, 4), (60, 0, 3), (60, 5, 10)]
    assert complete_bars(np.array([0]), 50, 4).tolist() == [0, 16, 32, 48]
    assert complete_bars(np.array([0, 12]), 40, 4).tolist() == [0, 12, 24, 36]
    assert complete_bars(np.array([], int), 40, 4).tolist() == []
    m = meters_from_bars(np.array([0, 96, 192, 264, 336]), 24)  # 4 beats, 4 beats, then 3 beats
    assert m.tolist() == [[0, 4, 4], [192, 3, 4]]
    assert meters_from_bars(np.array([0, 84]), 24).tolist() == [[0, 7, 8]]


def lpd5(path, with_guitar=True, steps=96):
    """An LPD-5-like file: Drums, Piano, Guitar, Bass, Strings, each its own line."""
    def line(pitch):
        pr = np.zeros((steps, 128), bool)
        for b in range(0, steps, 24):
            pr[b:b + 12, pitch] = True
        return pr
    tracks = [pypianoroll.BinaryTrack(name="Drums", program=0, is_drum=True, pianoroll=line(36)),
              pypianoroll.BinaryTrack(name="Piano", program=0, is_drum=False, pianoroll=line(60)),
              pypianoroll.BinaryTrack(name="Guitar", program=24, is_drum=False,
                                      pianoroll=line(76) if with_guitar else np.zeros((steps, 128), bool)),
              pypianoroll.BinaryTrack(name="Bass", program=32, is_drum=False, pianoroll=line(40)),
              pypianoroll.BinaryTrack(name="Strings", program=48, is_drum=False, pianoroll=line(55))]
    downbeat = np.zeros(steps, bool)
    downbeat[::96] = True
    pypianoroll.Multitrack(resolution=24, tempo=np.full(steps, 120.0), downbeat=downbeat, tracks=tracks).save(path)
    return path


def test_parts_by_track_name_or_program(tmp_path):
    f = lpd5(tmp_path / "a.npz")
    by_name = RollSpec(parts=2, part_mode="tracks", part_tracks=("guitar", "Piano,Bass,Strings"))
    song = read_npz_song(f, by_name)
    got = {(int(p), int(k)) for (p, _, _), k in zip(song.notes, song.part)}
    assert got == {(76, 0), (60, 1), (40, 1), (55, 1)}  # drums never, guitar the melody
    by_program = RollSpec(parts=2, part_mode="tracks", part_tracks=("32-39", "48"))
    song = read_npz_song(f, by_program)
    assert {(int(p), int(k)) for (p, _, _), k in zip(song.notes, song.part)} == {(40, 0), (55, 1)}
    assert song.stats["notes_unselected"] == 8  # piano and guitar left out: 4 notes each
    in_order = RollSpec(parts=2, part_mode="tracks")  # no selectors: the first track with notes is the melody
    song = read_npz_song(f, in_order)
    assert {(int(p), int(k)) for (p, _, _), k in zip(song.notes, song.part)} == {(60, 0), (76, 1), (40, 1), (55, 1)}


def test_preprocess_reads_npz_beside_midi_and_skips_a_file_without_a_part(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    lpd5(d / "full.npz", steps=24 * 80)
    lpd5(d / "noguitar.npz", with_guitar=False, steps=24 * 80)
    spec = RollSpec(parts=2, part_mode="tracks", part_tracks=("Guitar", "Piano,Bass,Strings"))
    m = preprocess(sorted(d.iterdir()), tmp_path / "c", spec, WindowOptions(val_fraction=0), progress=False)
    assert m["counts"]["converted"] == 1 and m["counts"]["skipped"] == {"no notes for part 0 (Guitar)": 1}
    why = read_lines(tmp_path / "c", m["skipped"])[0]["reason"]
    assert why.startswith("no notes for part 0 (Guitar): non-drum tracks with notes are Piano [program 0], ")
    s = ShardSet(tmp_path / "c")
    x = s.get([0])[0]
    assert x[0, 76 - SPEC.low].any() and not x[0, 60 - SPEC.low].any() and x[1, 60 - SPEC.low].any()
    assert s.records["ts_num"][0] == 4 and s.source_of(0)["tempo"] == 120.0
    assert m["spec"]["part_tracks"] == ["Guitar", "Piano,Bass,Strings"]


def bad_npz(d):
    """{file name: expected reason} for one bad .npz of each kind."""
    out = {}
    (d / "text.npz").write_text("not a zip")
    out["text.npz"] = "not a pianoroll .npz file (not a zip archive)"
    np.savez(d / "plain.npz", x=np.zeros(3))
    out["plain.npz"] = "not a pypianoroll Multitrack file: Cannot find `info.json`"
    np.savez(d / "nores.npz", x=np.zeros(3))
    with zipfile.ZipFile(d / "nores.npz", "a") as z:
        z.writestr("info.json", json.dumps({"name": "x"}))
    out["nores.npz"] = "not a pypianoroll Multitrack file: Cannot find `resolution`"
    np.savez(d / "zero.npz", x=np.zeros(3))
    with zipfile.ZipFile(d / "zero.npz", "a") as z:
        z.writestr("info.json", json.dumps({"name": "x", "resolution": 0}))
    out["zero.npz"] = "bad resolution: 0 time steps per beat"
    np.savez(d / "broken.npz", pianoroll_0_csc_data=np.ones(2))  # the other sparse arrays missing
    with zipfile.ZipFile(d / "broken.npz", "a") as z:
        z.writestr("info.json", json.dumps({"name": "x", "resolution": 24, "0": {"program": 0, "is_drum": False}}))
    out["broken.npz"] = "corrupt .npz: KeyError"
    steps = 96
    drum = pypianoroll.BinaryTrack(name="Drums", program=0, is_drum=True, pianoroll=np.ones((steps, 128), bool))
    pypianoroll.Multitrack(resolution=24, tracks=[drum]).save(d / "drums.npz")
    out["drums.npz"] = "no notes outside drum tracks"
    pypianoroll.Multitrack(resolution=24, tracks=[]).save(d / "empty.npz")
    out["empty.npz"] = "no notes outside drum tracks"
    return out


def test_each_bad_npz_is_skipped_with_its_reason(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    expected = bad_npz(d)
    lpd5(d / "good.npz", steps=24 * 80)
    m = preprocess(sorted(d.iterdir()), tmp_path / "c", SPEC, WindowOptions(val_fraction=0), progress=False)
    got = {s["path"].split("/")[-1]: s["reason"] for s in read_lines(tmp_path / "c", m["skipped"])}
    assert set(got) == set(expected) and m["counts"]["converted"] == 1
    for name, reason in expected.items():
        assert got[name].startswith(reason), (name, got[name])


def test_written_npz_reads_back_with_tempo_resolution_programs_and_tracks(tmp_path):
    spec = RollSpec(parts=2, part_mode="tracks")
    roll = np.zeros(spec.shape, bool)
    roll[0, 72 - spec.low, 0:6] = True
    roll[0, 74 - spec.low, 8:12] = True
    roll[1, 48 - spec.low, 0:16] = True
    save_npz(rolls_to_multitrack(roll, spec, tempo=96.0, programs=[73, 0], meter=(3, 4)), tmp_path / "g.npz")
    mt = pypianoroll.load(tmp_path / "g.npz")
    assert mt.resolution == 4 and np.allclose(np.asarray(mt.tempo).reshape(-1), 96.0)
    assert [(t.name, t.program, t.is_drum) for t in mt.tracks] == [("melody", 73, False), ("accompaniment", 0, False)]
    assert np.nonzero(np.asarray(mt.downbeat).reshape(-1))[0][:3].tolist() == [0, 12, 24]  # 3/4 bars of 12 steps
    assert mt.tracks[0].pianoroll.shape == (256, 128)
    back = read_npz_song(tmp_path / "g.npz", spec)
    assert [sorted(map(tuple, back.notes[back.part == k].tolist())) for k in (0, 1)] == \
        [sorted(map(tuple, p.tolist())) for p in roll_to_parts(roll, spec)]
    assert back.time_signature_at(np.array([0]))[0].tolist() == [3, 4] and back.tempo == 96.0
    assert not list(tmp_path.glob(".*"))


def test_npz_and_midi_of_one_tune_give_one_shard_set(tmp_path):
    """The same tune as .mid and as .npz (different names) in one folder: equal windows."""
    f = sorted(NOTTINGHAM.glob("*.mid"))[0]
    d = tmp_path / "in"
    d.mkdir()
    (d / "tune.mid").write_bytes(f.read_bytes())
    via_symusic(f, d / "tune-copy.npz")
    preprocess(sorted(d.iterdir()), tmp_path / "c", SPEC, WindowOptions(val_fraction=0), progress=False)
    s = ShardSet(tmp_path / "c")
    src = s.records["source"]
    assert len(set(src.tolist())) == 2
    assert np.array_equal(s.get(np.nonzero(src == 0)[0]), s.get(np.nonzero(src == 1)[0]))
    assert read_song(f, SPEC).steps > 0


def test_part_tracks_on_the_command_line_once_per_part(tmp_path, capsys):
    from apollogan.preprocess import main

    d = tmp_path / "in"
    d.mkdir()
    lpd5(d / "a.npz", steps=24 * 80)
    out = tmp_path / "c"
    assert main([str(d), "--out", str(out), "--quiet", "--parts", "tracks", "--part-tracks", "Guitar",
                 "--part-tracks", "name:piano,32-39"]) == 0
    spec = ShardSet(out).spec
    assert spec.part_tracks == ("Guitar", "name:piano,32-39") and spec.parts == 2
    song = read_npz_song(d / "a.npz", spec)
    assert {(int(p), int(k)) for (p, _, _), k in zip(song.notes, song.part)} == {(76, 0), (60, 1), (40, 1)}
    first = RollSpec(parts=2, part_mode="tracks", part_tracks=("24,guitar", "Guitar"))  # the first match wins
    assert first.part_of_track("Guitar", 24) == 0 and first.part_of_track("name:x", 0) == -1
    assert RollSpec(parts=2, part_mode="tracks", part_tracks=("name:808", "1")).part_of_track("808", 0) == 0


def test_an_absurdly_long_npz_is_refused_before_its_rolls_are_expanded(tmp_path):
    from scipy.sparse import csc_matrix

    path = tmp_path / "long.npz"
    steps = 24 * 30_000  # 30,000 beats, past the 20,000-beat limit; stored sparse, one note
    roll = csc_matrix(([1], ([steps - 1], [60])), shape=(steps, 128), dtype=np.uint8)
    np.savez(path, pianoroll_0_csc_data=roll.data, pianoroll_0_csc_indices=roll.indices,
             pianoroll_0_csc_indptr=roll.indptr, pianoroll_0_csc_shape=np.array(roll.shape))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("info.json", json.dumps({"name": "x", "resolution": 24, "0": {"program": 0, "is_drum": False,
                                                                                  "name": "p"}}))
    res = convert_file(path, 0, "train", SPEC, WindowOptions())
    assert res.error == "absurd length: 30000 beats (limit 20000)"
