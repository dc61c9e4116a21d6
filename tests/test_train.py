"""Training: a step changes weights, resume is bit-exact, logs and checkpoints are complete."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pypianoroll
import pytest
import torch
from conftest import NOTTINGHAM, REPO

from apollogan.checkpoint import load_checkpoint, resolve_checkpoint
from apollogan.cli import UserError, find_midi_files
from apollogan.config import load_config
from apollogan.data import WindowOptions, preprocess
from apollogan.spec import RollSpec
from apollogan.train import BatchStream, train

QUIET = dict(log=lambda *a, **k: None, progress=False)


def tiny(tmp_path, chunks, *extra):
    return load_config(None, [f"data.root={chunks}", "model.width=4", "model.fc_dim=16", "train.batch_size=4",
                              "train.steps=6", "run.log_every=2", "run.sample_every=3", "run.checkpoint_every=3",
                              "run.num_samples=4", "run.audio_samples=1", f"run.runs_dir={tmp_path}/runs",
                              f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=t", *extra])


def test_batch_stream_is_a_function_of_the_batch_number():
    a, b = BatchStream(50, 8, seed=1), BatchStream(50, 8, seed=1)
    seq = [a.indices(i).tolist() for i in range(14)]
    assert [b.indices(i).tolist() for i in (13, 2, 0)] == [seq[13], seq[2], seq[0]]
    assert sorted(sum(seq[:6], [])) == sorted(set(sum(seq[:6], [])))  # no repeats within an epoch
    r0, r1 = BatchStream(50, 4, 1, rank=0, world=2), BatchStream(50, 4, 1, rank=1, world=2)
    assert not set(r0.indices(3)) & set(r1.indices(3))


def test_training_changes_weights_and_keeps_losses_finite(tmp_path, chunks):
    out = train(tiny(tmp_path, chunks, "train.steps=2", "run.log_every=1"), **QUIET)
    ck = load_checkpoint(out["checkpoint"])
    assert ck["step"] == 2 and ck["batches"] == 2
    assert all(torch.isfinite(torch.tensor(out[k])) for k in ("Loss/D", "Loss/G"))
    from apollogan.models import build_models

    torch.manual_seed(0)
    g0, d0 = build_models(RollSpec(), load_config(base=ck["config"]).model)
    assert not torch.equal(g0.state_dict()["net.0.weight"], ck["modules"]["G"]["net.0.weight"])
    assert not torch.equal(ck["modules"]["G"]["net.0.weight"], ck["ema"]["G"]["net.0.weight"])  # EMA lags
    assert set(ck) >= {"family", "modules", "ema", "optimizers", "step", "rng", "config", "spec", "apollogan"}
    assert ck["family"] == "dcgan" and set(ck["modules"]) == set(ck["optimizers"]) == {"G", "D"}


def test_mode_seeking_changes_only_the_generator_step(tmp_path, chunks):
    # one step: D's update comes first and draws the same noise, so D is equal and G is not
    plain = train(tiny(tmp_path / "a", chunks, "train.steps=1", "run.log_every=1"), **QUIET)
    ms = train(tiny(tmp_path / "b", chunks, "train.steps=1", "run.log_every=1", "train.mode_seeking=1"), **QUIET)
    assert "ModeSeeking/ratio" not in plain and 0 < ms["ModeSeeking/ratio"] < float("inf")
    # the same G, D and noise before the G step: the loss differs by exactly + 1 / (ratio + 1e-5)
    assert ms["Loss/G"] - plain["Loss/G"] == pytest.approx(1 / (ms["ModeSeeking/ratio"] + 1e-5), rel=1e-4)
    a, b = load_checkpoint(plain["checkpoint"])["modules"], load_checkpoint(ms["checkpoint"])["modules"]
    assert all(torch.equal(a["D"][k], b["D"][k]) for k in a["D"])
    assert not all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def test_mode_seeking_on_the_probabilities_or_the_binary_rolls(tmp_path, chunks, monkeypatch):
    from apollogan.models import gan

    seen = []
    ratio = gan.mode_seeking_ratio
    monkeypatch.setattr(gan, "mode_seeking_ratio", lambda fake, z: seen.append(fake.detach()) or ratio(fake, z))
    for on in ("rolls", "probabilities"):
        train(tiny(tmp_path / on, chunks, "train.steps=1", "model.binary=deterministic", "train.mode_seeking=1",
                   f"train.mode_seeking_on={on}"), **QUIET)
    rolls, probs = seen
    assert set(rolls.unique().tolist()) == {0.0, 1.0}  # what D judges
    assert torch.equal(rolls, (probs >= 0.5).float()) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.parametrize("extra", [[], ["train.loss=hinge", "model.d_norm=spectral", "train.feature_matching=0.5"],
                                   ["train.loss=wgan-gp", "model.d_norm=none", "train.d_steps=2"],
                                   ["train.diffaug=time,pitch,cutout", "train.feature_matching=0.5"],
                                   ["train.mode_seeking=0.5"],
                                   ["model.key_cond=true", "train.loss=wgan-gp", "model.d_norm=none", "train.d_steps=2"]])
def test_resume_is_bit_identical(tmp_path, chunks, extra):
    straight = train(tiny(tmp_path / "a", chunks, *extra), **QUIET)
    half = train(tiny(tmp_path / "b", chunks, "train.steps=3", *extra), **QUIET)
    resumed = train(tiny(tmp_path / "b", chunks, *extra), resume=Path(half["checkpoint"]), **QUIET)
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert b["step"] == 6 and b["run_name"] == half["run_name"]
    for part, name in (("modules", "G"), ("modules", "D"), ("ema", "G")):
        for k in a[part][name]:
            assert torch.equal(a[part][name][k], b[part][name][k]), (part, name, k)
    sa, sb = a["optimizers"]["D"]["state"], b["optimizers"]["D"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


def test_tensorboard_holds_scalars_images_and_audio(tmp_path, chunks):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(tiny(tmp_path, chunks, "run.metrics_every=4", "run.metrics_samples=8"), **QUIET)
    assert "Metrics/overall" in out and "Metrics/memorisation_above_0.8" in out
    ev = EventAccumulator(out["run_dir"], size_guidance={"images": 0, "audio": 0, "scalars": 0, "histograms": 0,
                                                         "tensors": 0})
    ev.Reload()
    tags = ev.Tags()
    for s in ("Loss/D", "Loss/G", "D(x)", "D(G(z))", "GradNorm/D", "GradNorm/G", "LR/G", "LR/D",
              "Speed/samples_per_s", "Stats/note_density/generated", "Stats/note_density/real",
              "Metrics/pitch_range/generated", "Metrics/pitch_range/gap", "Metrics/overall",
              "Metrics/memorisation_above_0.8", "Metrics/pair_iou/generated", "Metrics/pair_iou/real"):
        assert s in tags["scalars"], s
    assert 0 < ev.Scalars("Metrics/pair_iou/real")[0].value < 0.5 and 0 <= out["Metrics/pair_iou"] <= 1
    assert [e.step for e in ev.Scalars("Loss/D")] == [2, 4, 6]
    assert all(0 < e.value < 1e3 for tag in ("GradNorm/D", "GradNorm/G") for e in ev.Scalars(tag))
    assert {"Real", "Samples/ema", "Samples/ema_binary", "Samples/vs_real"} <= set(tags["images"])
    for name in ("note_density", "pitches_used"):  # defined for every roll, empty ones too
        for side in ("generated", "real"):
            assert f"Metrics/{name}/hist_{side}" in tags["histograms"], (name, side)
    text = {t for t in tags["tensors"] if t.startswith("Run/")}
    assert {"Run/config/text_summary", "Run/spec/text_summary", "Run/data/text_summary"} <= text
    assert [e.step for e in ev.Images("Samples/ema")] == [3, 6]
    assert [e.step for e in ev.Scalars("Metrics/overall")] == [4, 6]  # run.metrics_every=4, and the end
    assert tags["audio"] == ["Audio/sample_0"] and [e.step for e in ev.Audio("Audio/sample_0")] == [3, 6]
    assert len(list(Path(out["run_dir"], "samples").rglob("*.mid"))) == 2 * 4
    assert (Path(out["run_dir"]) / "config.yaml").is_file()
    assert sorted(p.name for p in Path(out["checkpoint"]).parent.iterdir()) == ["best.pt", "last.pt",
                                                                                "step-0000003.pt", "step-0000006.pt"]
    # best.pt is the step logged lowest against the training windows, the steps whose samples are over 3x
    # as alike as real windows last
    alike = {e.step: e.value > 3 * r.value for e, r in zip(ev.Scalars("Metrics/pair_iou/generated"),
                                                             ev.Scalars("Metrics/pair_iou/real"))}
    lowest = min(ev.Scalars("Metrics/train/overall"), key=lambda e: (alike[e.step], e.value))
    assert out["best"] == {"step": lowest.step, "overall": pytest.approx(lowest.value), "alike": alike[lowest.step],
                           "on": "train", "weights": "ema",
                           "checkpoint": str(Path(out["checkpoint"]).parent / "best.pt")}
    # the same rolls scored against two sets of windows: the figures differ
    assert [e.value for e in ev.Scalars("Metrics/train/overall")] != [e.value for e in ev.Scalars("Metrics/overall")]


def test_keep_prunes_old_checkpoints_and_names_count_up(tmp_path, chunks):
    a = train(tiny(tmp_path, chunks, "run.checkpoint_every=1", "run.keep=2"), **QUIET)
    names = sorted(p.name for p in Path(a["checkpoint"]).parent.iterdir())
    assert names == ["last.pt", "step-0000005.pt", "step-0000006.pt"]
    b = train(tiny(tmp_path, chunks, "train.steps=1"), **QUIET)
    assert (a["run_name"], b["run_name"]) == ("t-001", "t-002")


def test_non_finite_loss_stops_with_the_step_and_keeps_the_good_checkpoint(tmp_path, chunks, monkeypatch):
    import apollogan.models.gan as tr

    real = tr.generator_loss
    calls = {"n": 0}

    def poisoned(kind, fake):
        calls["n"] += 1
        return real(kind, fake) * (float("nan") if calls["n"] == 5 else 1.0)
    monkeypatch.setattr(tr, "generator_loss", poisoned)
    with pytest.raises(UserError, match="non-finite loss at step 5"):
        train(tiny(tmp_path, chunks), **QUIET)
    ck = load_checkpoint(tmp_path / "ckpt" / "t-001" / "last.pt")
    assert ck["step"] == 3 and all(torch.isfinite(v).all() for v in ck["modules"]["G"].values() if v.is_floating_point())


def test_torn_checkpoints_fall_back_to_the_last_complete_one(tmp_path, chunks):
    out = train(tiny(tmp_path, chunks), **QUIET)
    folder = Path(out["checkpoint"]).parent
    (folder / ".step-0000009.pt.tmp").write_bytes(b"half a checkpoint")  # killed during a save
    assert resolve_checkpoint(str(folder))[0] == folder / "last.pt"
    (folder / "last.pt").unlink()
    (folder / "last.pt").write_bytes(b"\x80garbage")  # never made by the writer, but be safe
    path, ck = resolve_checkpoint("t-001", str(tmp_path / "ckpt"))
    assert path == folder / "step-0000006.pt" and ck["step"] == 6
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(folder / "last.pt")


def test_a_run_name_samples_best_pt_and_resumes_from_the_last_step(tmp_path, chunks, capsys):
    out = train(tiny(tmp_path, chunks), **QUIET)
    folder = Path(out["checkpoint"]).parent
    assert not (folder / "best.pt").exists()  # no scored steps: the sampling commands fall back to the last
    assert resolve_checkpoint("t-001", str(tmp_path / "ckpt"), best=True)[0] == folder / "last.pt"
    oldest = sorted(folder.glob("step-*.pt"))[0]
    shutil.copyfile(oldest, folder / "best.pt")  # best.pt is an earlier step than last.pt
    path, ck = resolve_checkpoint("t-001", str(tmp_path / "ckpt"), best=True)
    assert path == folder / "best.pt" and ck["step"] == load_checkpoint(oldest)["step"] < 6
    assert f"step {ck['step']}, the step training chose" in capsys.readouterr().err
    assert resolve_checkpoint(str(folder), best=False)[1]["step"] == 6  # --resume: the newest
    assert resolve_checkpoint(str(folder / "last.pt"), best=True)[1]["step"] == 6  # a file is taken as given


def test_evaluate_compares_with_the_meter_the_run_trained_in(tmp_path, chunks):
    from apollogan.evaluate import main as evaluate

    out = train(tiny(tmp_path, chunks, "run.meter=3/4"), **QUIET)
    common = ["--checkpoint", out["checkpoint"], "--num", "8", "--no-memorisation", "--device", "cpu"]
    got = {}
    for meter in ([], ["--meter", "4/4"]):  # the fixture's validation tunes: 41 windows in 3/4, 6 in 4/4
        assert evaluate([*common, *meter, "--out", str(tmp_path / "e.json")]) == 0
        res = json.loads((tmp_path / "e.json").read_text())
        got[res["meter"]] = res["real_windows"]
    assert got == {"3/4": 41, "4/4": 6}
    with pytest.raises(UserError, match="--meter '7': expected a time signature"):
        evaluate([*common, "--meter", "7"])


def run_module(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_cpu_smoke_preprocess_train_generate(tmp_path):
    files = find_midi_files([NOTTINGHAM])[:30]
    r = run_module("apollogan.preprocess", *files, "--out", tmp_path / "chunks", "--quiet", "--onset",
                   "--key-normalize")  # as the preset's data section asks
    assert r.returncode == 0, r.stderr
    r = run_module("apollogan.train", "--config", REPO / "configs/quick.yaml", f"data.root={tmp_path}/chunks",
                   "data.onset=true", "model.width=4", "train.steps=4", "train.batch_size=4", "run.log_every=2",
                   "run.sample_every=4", "run.checkpoint_every=4", f"run.runs_dir={tmp_path}/runs",
                   f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=smoke")
    assert r.returncode == 0, r.stderr
    # these 30 tunes leave no 4/4 window in the validation split: the run goes on without real-data metrics
    assert "no validation window in 4/4 to compare with (its meters: 2/2 (4))" in r.stdout + r.stderr
    ckpt = tmp_path / "ckpt" / "smoke-001" / "last.pt"
    assert load_checkpoint(ckpt)["spec"]["onset"] is True
    # a threshold of 0 turns every cell on: every file must hold notes
    r = run_module("apollogan.generate", "--checkpoint", ckpt, "--num", "3", "--out", tmp_path / "gen",
                   "--threshold", "0", "--png", "--format", "mid", "npz", "--device", "cpu", "--tempo", "90")
    assert r.returncode == 0, r.stderr
    mids = sorted((tmp_path / "gen").glob("*.mid"))
    assert len(mids) == 3 and (tmp_path / "gen" / "sample-grid.png").is_file()
    for m in mids:
        notes = [x for x in mido.MidiFile(m).tracks[0] if x.type == "note_on" and x.velocity > 0]
        assert len(notes) >= 64  # every pitch row sounds
        mt = pypianoroll.load(m.with_suffix(".npz"))
        assert mt.resolution == 4 and np.allclose(mt.tempo, 90) and len(mt.tracks) == 1
        assert mt.tracks[0].pianoroll[:, 30:94].all() and not mt.tracks[0].pianoroll[:, :30].any()
    r = run_module("apollogan.generate", "--checkpoint", ckpt, "--device", "cuda:99", "--out", tmp_path / "x")
    assert r.returncode == 2 and r.stderr.startswith("error: --device cuda:99: no such CUDA device")
    r = run_module("apollogan.generate", "--checkpoint", ckpt, "--interpolate", "4", "--out", tmp_path / "walk")
    assert r.returncode == 0 and len(list((tmp_path / "walk").glob("interp-*.mid"))) == 4


def test_cli_dry_run_and_bad_key(tmp_path):
    r = run_module("apollogan.train", "--config", "configs/apollogan.yaml", "--dry-run", "train.steps=5")
    assert r.returncode == 0 and "steps: 5" in r.stdout and "width: 128" in r.stdout
    r = run_module("apollogan.train", "--config", "configs/apollogan.yaml", "train.bogus=1")
    assert r.returncode == 2 and r.stderr.strip() == "error: train.bogus: unknown key (known in train: amp, " \
        "batch_size, beta1, beta2, channels_last, compile, d_steps, diffaug, ema_decay, feature_matching, gp_weight, " \
        "grad_clip, label_smoothing, loss, lr, lr_d, lr_decay, lr_g, mode_seeking, mode_seeking_on, r1, r1_every, seed, " \
        "steps, time_limit)"


def test_two_process_ddp_on_cpu(tmp_path, chunks):
    r = run_module("torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "apollogan.train",
                   f"data.root={chunks}", "model.width=4", "model.fc_dim=16", "train.batch_size=4",
                   "train.steps=4", "run.log_every=2", "run.sample_every=4", "run.checkpoint_every=4",
                   f"run.runs_dir={tmp_path}/runs", f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=ddp",
                   env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ckpt" / "ddp-001" / "last.pt")
    assert ck["step"] == 4 and ck["world"] == 2 and len(ck["rng"]) == 2
    assert ck["batches"] == 4  # per rank; each rank read its own slice of every global batch
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp-001"]  # rank 0 alone wrote


def test_lr_decay_falls_linearly_over_the_last_steps_and_resumes_exactly(tmp_path, chunks):
    from apollogan.train import lr_scale

    assert [lr_scale(s, 10, 0.5) for s in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert lr_scale(0, 10, 1.0) == 1.0 and lr_scale(9, 10, 1.0) == pytest.approx(0.1)
    out = train(tiny(tmp_path, chunks, "train.lr_decay=0.5", "train.lr_d=1e-4", "run.checkpoint_every=5"),
                **QUIET)  # 6 steps: the last 3 fall
    groups = load_checkpoint(out["checkpoint"])["optimizers"]
    assert groups["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 3)  # the last step's: 1/3 of lr_g
    assert groups["D"]["param_groups"][0]["lr"] == pytest.approx(1e-4 / 3)
    with pytest.raises(UserError, match=r"train.lr_decay: must be in \[0, 1\]"):
        train(tiny(tmp_path / "b", chunks, "train.lr_decay=1.5"), **QUIET)
    # resumed after 5 steps, inside the fall (the checkpoint holds rates at 2/3): the same run
    step5 = Path(out["checkpoint"]).parent / "step-0000005.pt"
    assert load_checkpoint(step5)["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 2 / 3)
    resumed = load_checkpoint(train(tiny(tmp_path / "c", chunks, "train.lr_decay=0.5", "train.lr_d=1e-4"),
                                    resume=step5, **QUIET)["checkpoint"])
    assert resumed["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 3)
    straight = load_checkpoint(out["checkpoint"])
    assert all(torch.equal(v, resumed["modules"]["G"][k]) for k, v in straight["modules"]["G"].items())


def test_ema_warm_up_then_the_configured_decay():
    from apollogan.train import ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 100_000) == 0.999


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_between_steps_and_resume_bit_exactly(tmp_path, chunks, monkeypatch, sig):
    import os
    import signal

    import apollogan.models.gan as tr
    from apollogan.cli import Terminated

    straight = load_checkpoint(train(tiny(tmp_path / "a", chunks), **QUIET)["checkpoint"])
    real = tr.generator_loss
    calls = {"n": 0}

    def signalled(kind, fake):  # the signal comes in the middle of step 5, after D's update
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), getattr(signal, sig))
        return real(kind, fake)
    monkeypatch.setattr(tr, "generator_loss", signalled)
    lines = []
    with pytest.raises(KeyboardInterrupt) as info:
        train(tiny(tmp_path / "b", chunks, "run.checkpoint_every=100"), log=lines.append, progress=False)
    assert isinstance(info.value, Terminated) == (sig == "SIGTERM")
    last = tmp_path / "b" / "ckpt" / "t-001" / "last.pt"
    assert load_checkpoint(last)["step"] == 5  # step 5 finished, then the run stopped and saved
    assert any(f"at step 5; saved {last}" in line for line in lines)
    monkeypatch.setattr(tr, "generator_loss", real)
    out = train(tiny(tmp_path / "b", chunks), resume=last, **QUIET)
    resumed = load_checkpoint(out["checkpoint"])
    assert resumed["step"] == 6 and out["run_name"] == "t-001"
    for part in ("modules", "ema", "optimizers"):
        for name in straight[part]:
            a, b = straight[part][name], resumed[part][name]
            if part == "optimizers":
                a, b = a["state"], b["state"]
                assert all(torch.equal(a[k][f], b[k][f]) for k in a for f in a[k]), name
            else:
                assert all(torch.equal(a[k], b[k]) for k in a), (part, name)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_a_second_ctrl_c_stops_at_once_and_saves_no_half_step(tmp_path, chunks, monkeypatch):
    import os
    import signal

    import apollogan.models.gan as tr

    real = tr.generator_loss
    calls = {"n": 0}

    def twice(kind, fake):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the second raises here, in the middle of the step
        return real(kind, fake)
    monkeypatch.setattr(tr, "generator_loss", twice)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, chunks), **QUIET)
    assert load_checkpoint(tmp_path / "ckpt" / "t-001" / "last.pt")["step"] == 3  # the last whole checkpoint


def test_unusable_roll_shape_and_unwritable_output_are_one_line(tmp_path, chunks):
    files = find_midi_files([NOTTINGHAM])[:5]
    preprocess(files, tmp_path / "c48", RollSpec(pitches=48), WindowOptions(), progress=False)
    r = run_module("apollogan.train", f"data.root={tmp_path}/c48", "train.steps=1", "model.width=4",
                   f"run.runs_dir={tmp_path}/runs", f"run.checkpoints_dir={tmp_path}/ckpt")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith("must be the noise grid 2x8 scaled by one power of two (>= 4) in both axes")
    (tmp_path / "afile").write_text("")
    r = run_module("apollogan.preprocess", *files, "--out", tmp_path / "afile", "--quiet")
    assert r.returncode == 2 and r.stderr.strip().endswith(f"error: {tmp_path / 'afile'}: File exists")


def test_best_checkpoint_is_the_lowest_training_time_overall_and_survives_resume(tmp_path, chunks, monkeypatch):
    import apollogan.monitor as tr

    scripted = {2: 3.0, 4: 1.0, 6: 2.0}  # the best is neither the first nor the last evaluation
    on_val = {2: 0.5, 4: 3.0, 6: 2.0}  # what the validation windows would choose: step 2
    monkeypatch.setattr(tr, "log_metrics", lambda *a, **k: {"Metrics/train/overall": scripted[a[6]],
                                                            "Metrics/overall": on_val[a[6]]})
    a = train(tiny(tmp_path / "a", chunks, "run.metrics_every=2"), **QUIET)
    best = load_checkpoint(Path(a["checkpoint"]).parent / "best.pt")
    assert best["step"] == 4 and best["best"] == {"step": 4, "overall": 1.0, "alike": False, "on": "train",
                                                      "weights": "ema"}
    v = train(tiny(tmp_path / "v", chunks, "run.metrics_every=2", "run.best_on=val"), **QUIET)
    assert v["best"]["step"] == 2 and v["best"]["overall"] == 0.5 and v["best"]["on"] == "val"
    assert load_checkpoint(a["checkpoint"])["step"] == 6 and a["best"]["step"] == 4
    # a resumed run compares with the best before the interruption: step 6 (2.0) does not replace step 4 (1.0)
    half = train(tiny(tmp_path / "b", chunks, "run.metrics_every=2", "train.steps=4"), **QUIET)
    b = train(tiny(tmp_path / "b", chunks, "run.metrics_every=2"), resume=Path(half["checkpoint"]), **QUIET)
    assert load_checkpoint(Path(b["checkpoint"]).parent / "best.pt")["step"] == 4
    # the moving average in best.pt is that of step 4, not of the end
    resumed_best = load_checkpoint(Path(b["checkpoint"]).parent / "best.pt")["ema"]["G"]
    assert all(torch.equal(best["ema"]["G"][k], resumed_best[k]) for k in resumed_best)
    assert not all(torch.equal(best["ema"]["G"][k], v) for k, v in load_checkpoint(a["checkpoint"])["ema"]["G"].items())
    # without metrics during training, or with keep_best off, there is no best.pt
    for extra in (["run.metrics_every=0"], ["run.metrics_every=2", "run.keep_best=false"]):
        c = train(tiny(tmp_path / "c", chunks, *extra), **QUIET)
        assert not (Path(c["checkpoint"]).parent / "best.pt").exists() and "best" not in c


def test_best_checkpoint_passes_over_steps_whose_samples_are_too_alike(tmp_path, chunks, monkeypatch):
    import apollogan.monitor as tr

    # step 2 has the lowest overall figure but its samples are 4.5x as alike as real windows (0.2);
    # step 4 is the best of the steps under 3x; step 6 is alike and worse
    scripted = {2: (1.0, 0.9), 4: (2.0, 0.5), 6: (1.5, 0.95)}
    monkeypatch.setattr(tr, "log_metrics", lambda *a, **k: {"Metrics/train/overall": scripted[a[6]][0],
                                                            "Metrics/pair_iou": scripted[a[6]][1],
                                                            "Metrics/pair_iou/real": 0.2})
    a = train(tiny(tmp_path / "a", chunks, "run.metrics_every=2"), **QUIET)
    assert load_checkpoint(Path(a["checkpoint"]).parent / "best.pt")["best"] == {"step": 4, "overall": 2.0, "alike": False,
                                                                                  "on": "train", "weights": "ema"}
    # run.best_pair_iou=0: the overall figure alone; a limit of 5x lets step 2 through
    for k in ("0", "5"):
        b = train(tiny(tmp_path / k, chunks, "run.metrics_every=2", f"run.best_pair_iou={k}"), **QUIET)
        assert b["best"]["step"] == 2 and b["best"]["alike"] is False
    # every step alike: the lowest overall figure, marked as such
    scripted[4] = (2.0, 0.61)
    c = train(tiny(tmp_path / "c", chunks, "run.metrics_every=2"), **QUIET)
    assert c["best"]["step"] == 2 and c["best"]["alike"] is True
    # a best from a checkpoint written before the rule (no "alike") counts as not alike on resume:
    # step 4 (2.0, not alike) does not replace it
    scripted[4] = (2.0, 0.5)
    half = train(tiny(tmp_path / "d", chunks, "run.metrics_every=2", "train.steps=2"), **QUIET)
    old = load_checkpoint(half["checkpoint"])
    old["best"] = {"step": 2, "overall": 1.0, "on": "train"}
    old.pop("digest")  # as written before checkpoints carried one
    torch.save(old, half["checkpoint"])
    torch.save(old, Path(half["checkpoint"]).parent / "best.pt")
    d = train(tiny(tmp_path / "d", chunks, "run.metrics_every=2"), resume=Path(half["checkpoint"]), **QUIET)
    assert d["best"]["step"] == 2
    # one from before run.best_on (no "on") was chosen on the validation windows: its figure does not
    # compare with the training windows', so the next scored step (4, worse by its figure) replaces it
    half = train(tiny(tmp_path / "e", chunks, "run.metrics_every=2", "train.steps=2"), **QUIET)
    old = load_checkpoint(half["checkpoint"])
    old["best"] = {"step": 2, "overall": 1.0, "alike": False}
    old.pop("digest")  # as written before checkpoints carried one
    torch.save(old, half["checkpoint"])
    torch.save(old, Path(half["checkpoint"]).parent / "best.pt")
    lines = []
    e = train(tiny(tmp_path / "e", chunks, "run.metrics_every=2"), resume=Path(half["checkpoint"]), log=lines.append,
              progress=False)
    assert e["best"]["step"] == 4 and e["best"]["on"] == "train"
    assert "best.pt: step 2 was chosen on the validation windows; the next scored step replaces it" in "\n".join(lines)
    for bad in ("-1", "nan"):
        with pytest.raises(UserError, match=r"run.best_pair_iou: (must be >= 0|expected a finite number)"):
            load_config(None, [f"run.best_pair_iou={bad}"])


def test_best_raw_scores_the_raw_weights_too_without_changing_the_training(tmp_path, chunks):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = ["run.metrics_every=2", "run.metrics_samples=16", "model.width=8"]
    off = train(tiny(tmp_path / "off", chunks, *extra), **QUIET)
    on = train(tiny(tmp_path / "on", chunks, *extra, "run.best_raw=true"), **QUIET)
    a, b = load_checkpoint(off["checkpoint"]), load_checkpoint(on["checkpoint"])
    # the raw weights are sampled in eval mode with their own noise: the same seed trains the same weights
    for part in ("modules", "ema"):
        assert all(torch.equal(a[part]["G"][k], v) for k, v in b[part]["G"].items())
    ev = EventAccumulator(on["run_dir"], size_guidance={"scalars": 0})
    ev.Reload()
    ema, raw = ({e.step: e.value for e in ev.Scalars(t)} for t in ("Metrics/train/overall", "Metrics/raw/train/overall"))
    assert sorted(raw) == [2, 4, 6] and raw != ema and "Metrics/raw/train/overall" not in off
    pair = {t: {e.step: e.value for e in ev.Scalars(t)} for t in ("Metrics/pair_iou/generated", "Metrics/raw/pair_iou")}
    limit = 3 * ev.Scalars("Metrics/pair_iou/real")[0].value
    cands = [(pair[t][s] > limit, fig[s], w, s) for fig, t, w in ((ema, "Metrics/pair_iou/generated", "ema"),
                                                                 (raw, "Metrics/raw/pair_iou", "raw")) for s in fig]
    alike, overall, weights, step = min(cands, key=lambda c: (c[0], c[1]))
    assert (on["best"]["step"], on["best"]["weights"], on["best"]["alike"]) == (step, weights, alike)
    assert on["best"]["overall"] == pytest.approx(overall)
    best = load_checkpoint(Path(on["checkpoint"]).parent / "best.pt")
    # what sampling loads is the raw G exactly when the raw weights were chosen
    same = all(torch.equal(best["ema"]["G"][k], v) for k, v in best["modules"]["G"].items())
    assert same == (weights == "raw")


def test_best_raw_writes_the_raw_weights_as_what_best_pt_samples_and_keeps_them_on_resume(tmp_path, chunks,
                                                                                       monkeypatch):
    import apollogan.monitor as tr

    ema = {2: 3.0, 4: 2.0, 6: 2.5}
    raw = {2: (2.8, 0.3), 4: (1.5, 0.3), 6: (1.0, 0.3)}  # (overall, pair IoU): the real windows' is 0.2
    monkeypatch.setattr(tr, "log_metrics", lambda *a, **k: {
        "Metrics/train/overall": ema[a[6]], "Metrics/pair_iou": 0.3, "Metrics/pair_iou/real": 0.2,
        "Metrics/raw/train/overall": raw[a[6]][0], "Metrics/raw/pair_iou": raw[a[6]][1]})
    cfg = ["run.metrics_every=2", "run.checkpoint_every=2", "run.keep=5"]
    # without run.best_raw the raw figures are not candidates: the moving average of step 4
    off = train(tiny(tmp_path / "off", chunks, *cfg), **QUIET)
    assert (off["best"]["step"], off["best"]["weights"], off["best"]["overall"]) == (4, "ema", 2.0)
    # with it, step 6's raw weights; a step whose raw samples are too alike is passed over
    raw[6] = (1.0, 0.7)
    a = train(tiny(tmp_path / "a", chunks, *cfg, "run.best_raw=true"), **QUIET)
    assert (a["best"]["step"], a["best"]["weights"], a["best"]["overall"], a["best"]["alike"]) == (4, "raw", 1.5, False)
    raw[6] = (1.0, 0.3)
    b = train(tiny(tmp_path / "b", chunks, *cfg, "run.best_raw=true"), **QUIET)
    folder = Path(b["checkpoint"]).parent
    best, step6 = load_checkpoint(folder / "best.pt"), load_checkpoint(folder / "step-0000006.pt")
    assert best["best"] == {"step": 6, "overall": 1.0, "alike": False, "on": "train", "weights": "raw"}
    # what sampling loads ("ema") is the raw G; the moving average of the same step differs from it
    assert all(torch.equal(best["ema"]["G"][k], v) for k, v in step6["modules"]["G"].items())
    assert not all(torch.equal(best["ema"]["G"][k], v) for k, v in step6["ema"]["G"].items())
    from apollogan.checkpoint import family_from_checkpoint
    family = family_from_checkpoint(best)[0]
    assert all(torch.equal(p, step6["modules"]["G"][k]) for k, p in family.modules["G"].state_dict().items())
    # resumed from step 4 (whose best is step 4's raw weights), the run goes another way: best.pt is
    # rewritten from the kept step 4 with its raw weights, not linked to its moving average
    raw[6] = (5.0, 0.3)
    lines = []
    c = train(tiny(tmp_path / "b", chunks, *cfg, "run.best_raw=true"), resume=folder / "step-0000004.pt",
              log=lines.append, progress=False)
    best, step4 = load_checkpoint(folder / "best.pt"), load_checkpoint(folder / "step-0000004.pt")
    assert c["best"]["step"] == best["step"] == 4 and best["best"]["weights"] == "raw"
    assert all(torch.equal(best["ema"]["G"][k], v) for k, v in step4["modules"]["G"].items())
    assert any("best.pt: step 4 (the raw weights, not their moving average)" in line for line in lines)


def test_best_is_chosen_on_validation_windows_when_no_training_window_has_the_meter(tmp_path, chunks, monkeypatch):
    import apollogan.monitor as tr

    real_same_meter = tr.same_meter

    def no_train_window(shards, meter):
        if shards.split == "train":
            raise UserError(f"{shards.root}: no training window in 4/4 to compare with")
        return real_same_meter(shards, meter)

    monkeypatch.setattr(tr, "same_meter", no_train_window)
    lines = []
    out = train(tiny(tmp_path, chunks, "run.metrics_every=3"), log=lines.append, progress=False)
    assert out["best"]["on"] == "val" and "Metrics/train/overall" not in out
    assert any(line.endswith("no training window in 4/4 to compare with: best.pt is chosen on the validation "
                             "windows instead") for line in lines)


def test_best_written_after_the_checkpoint_resumed_from_is_replaced(tmp_path, chunks, monkeypatch):
    import apollogan.monitor as tr

    scripted = {2: 3.0, 4: 2.0, 6: 1.0}
    monkeypatch.setattr(tr, "log_metrics", lambda *a, **k: {"Metrics/train/overall": scripted[a[6]]})
    cfg = ["run.metrics_every=2", "run.checkpoint_every=2", "run.keep=5"]
    a = train(tiny(tmp_path, chunks, *cfg), **QUIET)
    folder = Path(a["checkpoint"]).parent
    assert load_checkpoint(folder / "best.pt")["step"] == 6
    # resumed from step 4, the run goes another way: step 6 now scores worse than step 4
    scripted[6] = 5.0
    b = train(tiny(tmp_path, chunks, *cfg), resume=folder / "step-0000004.pt", **QUIET)
    best = load_checkpoint(folder / "best.pt")
    assert b["best"]["step"] == best["step"] == 4 and best["best"] == {"step": 4, "overall": 2.0, "alike": False, "on": "train",
                                                                     "weights": "ema"}
    # where the resumed checkpoint's best is no longer kept, the stale best.pt is removed and the
    # comparison starts afresh: step 6 (3.0) is written, not the abandoned path's 0.5
    scripted.update({2: 1.0, 4: 2.0, 6: 0.5})
    d = train(tiny(tmp_path / "d", chunks, *cfg), **QUIET)
    folder = Path(d["checkpoint"]).parent
    assert load_checkpoint(folder / "best.pt")["step"] == 6 and load_checkpoint(folder / "step-0000004.pt")["best"]["step"] == 2
    (folder / "step-0000002.pt").unlink()
    scripted[6] = 3.0
    e = train(tiny(tmp_path / "d", chunks, *cfg), resume=folder / "step-0000004.pt", **QUIET)
    assert e["best"] == {"step": 6, "overall": 3.0, "alike": False, "on": "train", "weights": "ema",
                         "checkpoint": str(folder / "best.pt")}
    assert load_checkpoint(folder / "best.pt")["best"] == {"step": 6, "overall": 3.0, "alike": False, "on": "train",
                                                    "weights": "ema"}


def test_best_metric_kd_needs_the_feature_distances_and_says_so_before_training(tmp_path, chunks):
    with pytest.raises(UserError, match=r"run.best_metric=kd: run.metrics_samples=8 is under the feature distances' "
                                        r"sample size 200"):
        train(tiny(tmp_path, chunks, "run.metrics_every=2", "run.metrics_samples=8", "run.best_metric=kd"), **QUIET)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").rglob("*.pt"))
    with pytest.raises(UserError, match=r"run.best_metric: 'psnr' is not one of overall, kd, fd"):
        load_config(None, ["run.best_metric=psnr"])
    lines = []  # the overall figure needs no network: a run without one says once why Metrics/kd is missing
    train(tiny(tmp_path / "o", chunks, "run.metrics_every=3"), log=lines.append, progress=False)
    assert sum("Metrics/kd and Metrics/fd are not logged" in line for line in lines) == 1


def test_best_metric_kd_chooses_best_pt_by_kd_not_by_the_overall_figure(tmp_path, chunks, monkeypatch):
    import apollogan.monitor as tr

    overall = {2: 1.0, 4: 3.0, 6: 2.0}  # the overall figure would choose step 2
    kd = {2: 5.0, 4: 1.0, 6: 9.0}  # KD chooses step 4
    monkeypatch.setattr(tr, "feature_network", lambda *a, **k: object())  # a network is there
    monkeypatch.setattr(tr, "log_metrics", lambda *a, **k: {"Metrics/train/overall": overall[a[6]],
                                                            "Metrics/train/kd": kd[a[6]]})
    out = train(tiny(tmp_path / "kd", chunks, "run.metrics_every=2", "run.best_metric=kd"), **QUIET)
    assert out["best"]["step"] == 4 and out["best"]["overall"] == 1.0 and out["best"]["metric"] == "kd"
    plain = train(tiny(tmp_path / "o", chunks, "run.metrics_every=2"), **QUIET)
    assert plain["best"]["step"] == 2 and "metric" not in plain["best"]
    # resumed under the other figure, the best of the first half is not compared with it: step 6 replaces it
    half = train(tiny(tmp_path / "r", chunks, "run.metrics_every=2", "train.steps=4"), **QUIET)
    lines = []
    again = train(tiny(tmp_path / "r", chunks, "run.metrics_every=2", "run.best_metric=kd"), resume=Path(half["checkpoint"]),
                  log=lines.append, progress=False)
    assert again["best"]["step"] == 6 and any("was chosen by overall; the next scored step replaces it" in x for x in lines)
