"""Parts in the data path (tracks, skyline), their decoder and metrics, and the chord-conditioned GAN."""
import json
import math
from pathlib import Path

import mido
import numpy as np
import pytest
import symusic
import torch

from apollogan.checkpoint import family_from_checkpoint, load_checkpoint
from apollogan.cli import UserError
from apollogan.config import load_config
from apollogan.data import WindowOptions, preprocess
from apollogan.metrics import chord_tone_rate, metric_names, roll_metrics, tonal_distance_parts
from apollogan.midi import MidiError, notes_to_midi, read_song, roll_to_parts, save_midi, song_roll
from apollogan.shards import ShardSet, read_lines
from apollogan.spec import RollSpec
from apollogan.train import train

QUIET = dict(log=lambda *a, **k: None, progress=False)
TRACKS = RollSpec(parts=2, part_mode="tracks")
SKYLINE = RollSpec(parts=2, part_mode="skyline", onset=True)
LOW = TRACKS.low


def write_tracks(path, tracks, tpq=480, time_signature=(4, 4)):
    """One MIDI track per list of (pitch, start_beat, end_beat), in order."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    head = mido.MidiTrack([mido.MetaMessage("time_signature", numerator=time_signature[0],
                                            denominator=time_signature[1], time=0)])
    mid.tracks.append(head)
    for ch, notes in enumerate(tracks):
        ev = sorted([(int(e * tpq), 0, p) for p, s, e in notes] + [(int(s * tpq), 1, p) for p, s, e in notes])
        tr, now = mido.MidiTrack(), 0
        for t, on, p in ev:
            tr.append(mido.Message("note_on" if on else "note_off", note=p, velocity=80 if on else 0, channel=ch,
                                   time=t - now))
            now = t
        mid.tracks.append(tr)
    mid.save(str(path))
    return Path(path)


def rows(roll, channel):
    return sorted(set(np.nonzero(roll[channel].any(axis=1))[0] + LOW))


# --- the spec and the data path --------------------------------------------------------------

def test_spec_parts_shape_and_names():
    assert TRACKS.channels == 2 and RollSpec(parts=3, part_mode="tracks", onset=True).channels == 6
    assert SKYLINE.channel_names == ["melody/sustain", "melody/onset", "accompaniment/sustain", "accompaniment/onset"]
    for bad in (dict(parts=2), dict(parts=1, part_mode="tracks"), dict(parts=3, part_mode="skyline")):
        with pytest.raises(ValueError):
            RollSpec(**bad)
    assert RollSpec.from_dict({k: v for k, v in RollSpec().to_dict().items() if k not in ("parts", "part_mode")}) \
        == RollSpec()  # manifests and checkpoints from before parts read as one merged part


def test_tracks_become_parts_in_file_order_and_later_tracks_join_the_last(tmp_path):
    melody = [(72, 0, 1), (74, 1, 2)]
    chords = [(48, 0, 2), (52, 0, 2)]
    bass = [(36, 0, 2)]
    roll = song_roll(read_song(write_tracks(tmp_path / "a.mid", [melody, chords]), TRACKS), 16, TRACKS)
    assert rows(roll, 0) == [72, 74] and rows(roll, 1) == [48, 52]
    # file order, not pitch: a file with the chords first has them as part 0
    flipped = song_roll(read_song(write_tracks(tmp_path / "b.mid", [chords, melody]), TRACKS), 16, TRACKS)
    assert rows(flipped, 0) == [48, 52] and rows(flipped, 1) == [72, 74]
    three = song_roll(read_song(write_tracks(tmp_path / "c.mid", [melody, chords, bass]), TRACKS), 16, TRACKS)
    assert rows(three, 0) == [72, 74] and rows(three, 1) == [36, 48, 52]
    with pytest.raises(MidiError, match="too few tracks: 1 non-drum track"):
        read_song(write_tracks(tmp_path / "d.mid", [melody + chords]), TRACKS)


def test_skyline_splits_the_highest_sounding_pitch_from_the_rest(tmp_path):
    # a held C3 under a melody with a rest: while the melody rests, C3 is the highest and joins the melody
    notes = [(48, 0, 4), (72, 0, 1), (76, 2, 4)]
    roll = song_roll(read_song(write_tracks(tmp_path / "s.mid", [notes]), SKYLINE), 16, SKYLINE)
    mel, mel_on, acc, acc_on = roll[:, :, :16].astype(bool)
    assert np.nonzero(mel[72 - LOW])[0].tolist() == [0, 1, 2, 3]
    assert np.nonzero(mel[48 - LOW])[0].tolist() == [4, 5, 6, 7]  # sounding alone: the skyline
    assert np.nonzero(acc[48 - LOW])[0].tolist() == [0, 1, 2, 3] + list(range(8, 16))
    assert not acc[72 - LOW].any() and not acc[76 - LOW].any()
    # the held note starts anew where it changes part: an onset at step 4 in the melody and step 8 back below
    assert np.nonzero(mel_on[48 - LOW])[0].tolist() == [4] and np.nonzero(acc_on[48 - LOW])[0].tolist() == [0, 8]
    assert (mel.sum(axis=0) <= 1).all()


def test_preprocess_with_parts_skips_files_with_too_few_tracks_and_records_the_channels(tmp_path):
    d = tmp_path / "midi"
    d.mkdir()
    for i in range(3):
        write_tracks(d / f"two{i}.mid", [[(72 + i, b, b + 1) for b in range(64)], [(48, b, b + 4) for b in range(0, 64, 4)]])
    write_tracks(d / "one.mid", [[(60, b, b + 1) for b in range(64)]])
    m = preprocess(sorted(d.glob("*.mid")), tmp_path / "out", TRACKS, WindowOptions(val_fraction=0.0), progress=False)
    assert m["counts"]["converted"] == 3 and m["counts"]["skipped"] == {"too few tracks": 1}
    assert [s["path"].endswith("one.mid") for s in read_lines(tmp_path / "out", m["skipped"])] == [True]
    assert m["channels"] == ["melody/sustain", "accompaniment/sustain"]
    x = ShardSet(tmp_path / "out", "train").get([0])[0]
    assert rows(x, 0)[0] >= 72 and rows(x, 1) == [48]


def test_decoder_writes_one_named_track_per_part_that_reads_back_as_the_same_parts(tmp_path):
    spec = RollSpec(parts=2, part_mode="tracks", onset=True)
    roll = np.zeros(spec.shape, bool)
    roll[0, 72 - LOW, 0:4] = roll[1, 72 - LOW, 0] = True  # melody C5
    roll[0, 72 - LOW, 4:8] = roll[1, 72 - LOW, 4] = True  # repeated: a second note
    roll[2, 48 - LOW, 0:8] = roll[3, 48 - LOW, 0] = True  # accompaniment C3
    parts = roll_to_parts(roll, spec)
    assert [p.tolist() for p in parts] == [[[72, 0, 4], [72, 4, 8]], [[48, 0, 8]]]
    path = tmp_path / "p.mid"
    save_midi(notes_to_midi(parts, spec, program=[73, 0], names=spec.part_names), path)
    mid = mido.MidiFile(str(path))
    assert [t.name for t in mid.tracks] == ["melody", "accompaniment"]
    programs = [[m.program for m in t if m.type == "program_change"] for t in mid.tracks]
    assert programs == [[73], [0]]
    back = song_roll(read_song(path, spec), 256, spec)
    assert np.array_equal(back, roll)


# --- metrics ---------------------------------------------------------------------------------

def two(melody_notes, chord_notes, steps=32):
    mel, acc = np.zeros((1, 64, steps), bool), np.zeros((1, 64, steps), bool)
    for p, s, e in melody_notes:
        mel[0, p - LOW, s:e] = True
    for p, s, e in chord_notes:
        acc[0, p - LOW, s:e] = True
    return mel, acc


def test_chord_tone_rate_known_answers():
    c_major = [(48, 0, 8), (52, 0, 8), (55, 0, 8)]
    # C5 over C major: a chord tone; D5 over it: not; E5 at step 8, with no chord sounding: left out
    mel, acc = two([(72, 0, 4), (74, 4, 8), (76, 8, 12)], c_major)
    assert chord_tone_rate(mel, acc, low=LOW)[0] == pytest.approx(0.5)
    # the roles are not symmetric: the chord's three onsets against the melody's one pitch class
    assert chord_tone_rate(acc, mel, low=LOW)[0] == pytest.approx(1 / 3)
    # a held melody note is one note: counted at its onset only
    mel, acc = two([(74, 0, 4)], [(50, 2, 4)])
    assert math.isnan(chord_tone_rate(mel, acc, low=LOW)[0])  # the chord starts after the onset
    mel, acc = two([(74, 2, 4)], [(50, 0, 4)])
    assert chord_tone_rate(mel, acc, low=LOW)[0] == 1.0  # D over D, two octaves apart
    mel, acc = two([(72, 0, 4)], [])
    assert math.isnan(chord_tone_rate(mel, acc, low=LOW)[0])  # no accompaniment at all
    mel, acc = two([], c_major)
    assert math.isnan(chord_tone_rate(mel, acc, low=LOW)[0])  # no melody


def test_tonal_distance_between_parts_known_answers():
    mel, acc = two([(72, 0, 4)], [(60, 0, 4)])
    assert tonal_distance_parts(mel, acc, low=LOW)[0] == pytest.approx(0.0, abs=1e-12)
    mel, acc = two([(66, 0, 4), (78, 8, 12)], [(60, 0, 4)])  # tritone on beat 0; beat 2 has no accompaniment
    assert tonal_distance_parts(mel, acc, low=LOW)[0] == pytest.approx(2 * math.sqrt(2))


def test_part_metrics_are_named_by_what_they_score():
    names = metric_names(TRACKS)
    assert "melody/pitches_used" in names and "merged/pitches_used" in names and "chord_tone_rate" in names
    assert metric_names(RollSpec()) == [n.split("/")[-1] for n in names if n.startswith("melody/")]
    mel, acc = two([(72, 0, 4), (76, 4, 8)], [(48, 0, 8), (52, 0, 8), (55, 0, 8)])
    rolls = np.stack([mel, acc], axis=1)  # [1, 2, P, T]
    got = roll_metrics(rolls, TRACKS, 16)
    assert got["melody/pitches_used"][0] == 2 and got["merged/pitches_used"][0] == 5
    assert got["melody/polyphony"][0] == 1 and got["merged/polyphony"][0] == 4
    assert got["chord_tone_rate"][0] == 1.0


# --- the conditional GAN ---------------------------------------------------------------------

TINY_COND = ["model.family=cond_gan", "model.width=4", "model.cond_width=4", "model.fc_dim=16",
             "train.feature_matching=0.5", "train.label_smoothing=0.1"]


def tiny_cond(tmp_path, chunks, *extra):
    return load_config(None, [*TINY_COND, f"data.root={chunks}", "train.batch_size=4", "train.steps=6",
                              "run.log_every=2", "run.sample_every=3", "run.checkpoint_every=3", "run.num_samples=4",
                              "run.audio_samples=1", "run.metrics_every=6", "run.metrics_samples=8",
                              f"run.runs_dir={tmp_path}/runs", f"run.checkpoints_dir={tmp_path}/ckpt",
                              "run.name=cond", *extra])


def test_cond_gan_refuses_data_without_parts(tmp_path, chunks):
    with pytest.raises(UserError, match="needs rolls with parts"):
        train(tiny_cond(tmp_path, chunks), **QUIET)


def test_cond_gan_trains_resumes_bit_exactly_and_keeps_the_given_chords(tmp_path, parts_chunks):
    straight = train(tiny_cond(tmp_path / "a", parts_chunks), **QUIET)
    half = train(tiny_cond(tmp_path / "b", parts_chunks, "train.steps=3"), **QUIET)
    resumed = train(tiny_cond(tmp_path / "b", parts_chunks), resume=Path(half["checkpoint"]), **QUIET)
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["family"] == "cond_gan" and "conditioner.0.0.weight" in a["modules"]["G"]
    for part in ("modules", "ema"):
        for name, sd in a[part].items():
            for k in sd:
                assert torch.equal(sd[k], b[part][name][k]), (part, name, k)
    assert "Metrics/chord_tone_rate/gap" in straight and "Metrics/melody/pitch_range/gap" in straight

    family, spec, _ = family_from_checkpoint(a)
    real = torch.from_numpy(ShardSet(parts_chunks, "val").pick(5, 0)).float()
    out = family.sample(5, torch.Generator().manual_seed(0), real=real)
    assert out.shape == real.shape
    assert torch.equal(out[:, 1], real[:, 1])  # the accompaniment as given
    assert not torch.equal(out[:, 0], real[:, 0]) and 0 <= out[:, 0].min() and out[:, 0].max() <= 1
    with pytest.raises(ValueError, match="real windows"):
        family.sample(5, torch.Generator().manual_seed(0), real=None)


def test_cond_gan_mode_seeking_compares_only_the_melody(tmp_path, parts_chunks, monkeypatch):
    from apollogan.models import gan

    seen = []
    ratio = gan.mode_seeking_ratio
    monkeypatch.setattr(gan, "mode_seeking_ratio", lambda fake, z: seen.append(fake.shape) or ratio(fake, z))
    out = train(tiny_cond(tmp_path, parts_chunks, "train.steps=1", "train.mode_seeking=0.1"), **QUIET)
    assert [s[:2] for s in seen] == [(4, 1)]  # channel 0, the melody; the copied accompaniment is left out
    assert 0 < out["ModeSeeking/ratio"] < float("inf")


def test_generate_condition_writes_the_chords_unchanged_and_a_melody_over_the_whole_file(tmp_path, parts_chunks):
    from apollogan.generate import main as generate

    run = train(tiny_cond(tmp_path, parts_chunks), **QUIET)
    src = Path(__file__).resolve().parent.parent / "data" / "nottingham" / "full" / "ashover1.mid"
    out = tmp_path / "over"
    # threshold 0 keeps every cell: a melody note in every row at every step, whatever the weights
    assert generate(["--checkpoint", run["checkpoint"], "--condition", str(src), "--num", "2", "--out", str(out),
                     "--threshold", "0", "--program", "73"]) == 0
    files = sorted(out.glob("ashover1-melody-*.mid"))
    assert len(files) == 2
    given, made = symusic.Score(str(src)), symusic.Score(str(files[0]))
    assert made.ticks_per_quarter == given.ticks_per_quarter
    assert [t.name for t in made.tracks] == ["melody", given.tracks[1].name] and made.tracks[0].program == 73
    a, b = given.tracks[1].notes.numpy(), made.tracks[1].notes.numpy()
    assert all(np.array_equal(a[k], b[k]) for k in ("time", "duration", "pitch", "velocity"))
    assert len(made.time_signatures) == len(given.time_signatures)
    # the melody covers the whole tune, window after window
    song_end = max(t.end() for t in given.tracks)
    assert song_end - given.ticks_per_quarter < made.tracks[0].end() <= song_end  # and stops where the tune ends
    with pytest.raises(UserError, match=r"ashover1.mid: track 5: out of range; the file has 2 non-drum track"):
        generate(["--checkpoint", run["checkpoint"], "--condition", str(src), "--condition-melody", "track", "5",
                  "--out", str(out)])
    with pytest.raises(UserError, match="--condition-melody: says which notes of the --condition file to replace"):
        generate(["--checkpoint", run["checkpoint"], "--condition-melody", "skyline", "--out", str(out)])


def test_evaluate_scores_a_conditional_model_beside_real_melodies_and_another_model(tmp_path, parts_chunks):
    from apollogan.evaluate import main as evaluate

    cond = train(tiny_cond(tmp_path / "c", parts_chunks), **QUIET)
    uncond = train(load_config(None, ["model.width=4", "model.fc_dim=16", f"data.root={parts_chunks}",
                                      "train.batch_size=4", "train.steps=2", "run.metrics_samples=8",
                                      f"run.runs_dir={tmp_path}/u", f"run.checkpoints_dir={tmp_path}/u",
                                      "run.name=uncond"]), **QUIET)
    out = tmp_path / "eval.json"
    assert evaluate(["--checkpoint", cond["checkpoint"], "--against", uncond["checkpoint"], "--num", "20",
                     "--out", str(out), "--no-memorisation"]) == 0
    res = json.loads(out.read_text())
    rows = res["conditioning"]["rows"]
    assert res["conditioning"]["windows"] == 20 and len(rows) == 5
    # the real melodies of these windows: Nottingham tunes sit mostly on their chords
    assert rows["real melodies"]["chord_tone_rate"] > 0.5
    assert "chord_tone_rate" in res["metrics"] and "melody/pitch_range" in res["metrics"]
    with pytest.raises(UserError, match="compares a conditional model"):
        evaluate(["--checkpoint", uncond["checkpoint"], "--against", cond["checkpoint"], "--num", "4"])


# --- conditioning is decisive ------------------------------------------------------------------

CHORDS = {  # a triad in the low octave, and the melody notes that belong to it
    "C": ([48, 52, 55], [64, 67, 72, 76]),
    "F": ([53, 57, 60], [65, 69, 72, 77]),
    "G": ([50, 55, 59], [67, 71, 74, 79]),
    "Am": ([52, 57, 60], [64, 69, 72, 76]),
}
SMALL = RollSpec(low=48, pitches=32, steps=128, parts=2, part_mode="tracks")  # 8 bars of 4/4 per window


def chord_tunes(folder: Path, n: int, bars: int = 32, seed: int = 0) -> None:
    """Tunes whose chord changes every bar, at random, under a melody of quarter notes drawn from
    that bar's chord tones: the chord decides the melody's pitch classes, and nothing else does."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        melody, chords = [], []
        for b in range(bars):
            triad, tones = CHORDS[list(CHORDS)[rng.integers(len(CHORDS))]]
            chords += [(p, 4 * b, 4 * b + 4) for p in triad]
            melody += [(int(rng.choice(tones)), 4 * b + q, 4 * b + q + 1) for q in range(4)]
        write_tracks(folder / f"tune{i:03d}.mid", [melody, chords])


def test_conditioning_is_decisive_the_melody_follows_the_chords_it_is_given(tmp_path):
    chord_tunes(tmp_path / "midi", 48)
    root = tmp_path / "chunks"
    preprocess(sorted((tmp_path / "midi").glob("*.mid")), root, SMALL, WindowOptions(hop=64, val_fraction=0.25),
               progress=False)
    # the preset's recipe (WGAN-GP, 2 critic steps) at a tiny width; 400 steps, fp32
    cfg = load_config(None, ["model.family=cond_gan", "model.width=8", "model.cond_width=8", "model.fc_dim=64",
                             "model.d_norm=none", f"data.root={root}", "train.batch_size=32", "train.steps=400",
                             "train.amp=off", "train.loss=wgan-gp", "train.d_steps=2", "train.lr_g=0.001",
                             "train.lr_d=0.001", "run.log_every=100", "run.sample_every=1000", "run.checkpoint_every=1000",
                             "run.metrics_every=1000", "run.metrics_samples=16", f"run.runs_dir={tmp_path}/runs",
                             f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=decisive"])
    run = train(cfg, **QUIET)
    family, spec, _ = family_from_checkpoint(load_checkpoint(run["checkpoint"]), ema=False)  # 400 steps: the raw weights
    val = torch.from_numpy(ShardSet(root, "val").pick(64, 0)).float()
    shuffled = val.clone()
    shuffled[:, 1] = val.roll(1, dims=0)[:, 1]  # each window given another window's chords
    assert not torch.equal(shuffled[:, 1], val[:, 1])

    def rate(given):  # the melodies drawn over ``given`` chords, scored against the window's own chords
        melody = family.sample(len(given), torch.Generator().manual_seed(0), real=given)[:, 0].numpy() >= 0.5
        return np.nanmean(chord_tone_rate(melody, val[:, 1].numpy().astype(bool), low=spec.low))

    own, other = rate(val), rate(shuffled)
    real = np.nanmean(chord_tone_rate(val[:, 0].numpy().astype(bool), val[:, 1].numpy().astype(bool), low=spec.low))
    assert real == 1.0  # the fixture's melodies are all chord tones
    assert own > other + 0.2, (own, other)
