"""Ablations: the file format, dry runs, the local and submitit executors, skip and resume; and the
fixes that came with them (shards that differ from the config, the meter of free samples, binary neurons)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO

from apollogan.ablate import load_ablation, plan
from apollogan.ablate import main as ablate_main
from apollogan.cli import UserError
from apollogan.config import load_config
from apollogan.models.dcgan import Generator
from apollogan.scoring import evaluate_rolls
from apollogan.shards import ShardSet
from apollogan.spec import RollSpec
from apollogan.train import train

SMOKE = REPO / "configs" / "ablations" / "smoke.yaml"


def write(path, text):
    path.write_text(text)
    return path


def test_grid_times_variants_gives_named_cells_with_their_overrides(tmp_path):
    f = write(tmp_path / "mix.yaml", """
base: configs/quick.yaml
seeds: 2
overrides: [model.width=8]
grid: {train.loss: [bce, hinge], train.feature_matching: [0.0, 1.0]}
variants:
  plain: []
  bern: {overrides: [model.d_norm=none], evaluate: [--bernoulli]}
""")
    ab = load_ablation(f)
    assert len(ab.cells) == 8 and ab.seeds == [0, 1]
    cell = next(c for c in ab.cells if c.name == "bern,loss=hinge,feature_matching=1.0")
    assert cell.overrides == ["model.d_norm=none", "train.loss=hinge", "train.feature_matching=1.0"]
    assert cell.evaluate == ["--bernoulli"]
    assert load_ablation(f, seeds=3, steps=7).cli_steps == 7
    jobs = plan(load_ablation(f, seeds=1), build_data=False)
    j = next(j for j in jobs if j.cell == cell.name)
    assert {j.steps for j in jobs} == {1500}  # the base preset's
    f2 = write(tmp_path / "steps.yaml", "base: configs/quick.yaml\nsteps: 50\nvariants: {a: [], b: [train.steps=70]}\n")
    assert [j.steps for j in plan(load_ablation(f2), build_data=False)] == [50, 70]  # a cell's own budget wins
    assert [j.steps for j in plan(load_ablation(f2, steps=9), build_data=False)] == [9, 9]  # --steps beats both
    f3 = write(tmp_path / "fresh.yaml", "base: configs/quick.yaml\nseeds: 2\nfirst_seed: 10\nvariants: {a: []}\n")
    fresh = plan(load_ablation(f3), build_data=False)
    assert [(j.seed, j.run) for j in fresh] == [(10, "a-s10"), (11, "a-s11")] and "train.seed=11" in fresh[1].train_cmd
    assert load_ablation(f3, seeds=3).seeds == [10, 11, 12]  # --seeds counts from first_seed
    with pytest.raises(UserError, match="first_seed: expected an integer >= 0, got -1"):
        load_ablation(write(tmp_path / "neg.yaml", "base: configs/quick.yaml\nfirst_seed: -1\n"))
    assert j.run == f"{cell.name}-s0" and "--bernoulli" in j.eval_cmd
    assert j.train_cmd[:4] == ["python", "-m", "apollogan.train", "--config"]
    assert Path(j.train_cmd[4]).resolve() == REPO / "configs" / "quick.yaml"
    assert "model.width=8" in j.train_cmd and "run.numbered=false" in j.train_cmd and "train.seed=0" in j.train_cmd


def test_a_cell_with_other_data_options_gets_its_own_shards(tmp_path):
    # a base on the default bundled folder (chunks/nottingham): the preset of rounds 23 to 33
    f = write(tmp_path / "onset.yaml", "base: configs/ablations/rounds/base-r23.yaml\ngrid: {data.onset: [false, true]}\n")
    jobs = {j.cell: j for j in plan(load_ablation(f), build_data=False)}
    assert not any(a.startswith("data.root=") for a in jobs["onset=false"].train_cmd)
    assert "data.root=chunks/nottingham-onset" in jobs["onset=true"].train_cmd
    f = write(tmp_path / "key.yaml", "base: configs/ablations/rounds/base-r23.yaml\ngrid: {data.key_normalize: [true]}\n")
    (job,) = plan(load_ablation(f), build_data=False)
    assert "data.root=chunks/nottingham-key" in job.train_cmd
    # a base on the bundled folder made with its own options
    base = write(tmp_path / "base.yaml", "data: {root: chunks/nottingham-key, key_normalize: true}\n")
    f = write(tmp_path / "keyed.yaml", f"base: {base}\nvariants: {{same: [], onset: [data.onset=true], "
                                       "written: [data.key_normalize=false]}\n")
    jobs = {j.cell: j for j in plan(load_ablation(f), build_data=False)}
    assert not any(a.startswith("data.root=") for a in jobs["same"].train_cmd)
    assert "data.root=chunks/nottingham-onset-key" in jobs["onset"].train_cmd
    assert "data.root=chunks/nottingham" in jobs["written"].train_cmd
    # a folder of the user's own is never swapped for a bundled one
    f = write(tmp_path / "own.yaml", f"base: {base}\noverrides: [data.root=mine]\nvariants: {{onset: [data.onset=true]}}\n")
    (job,) = plan(load_ablation(f), build_data=False)
    assert [a for a in job.train_cmd if a.startswith("data.root=")] == ["data.root=mine"]


def test_overrides_that_hold_only_with_each_cells_own_are_planned(tmp_path):
    # train.r1_every alone is refused (it needs train.r1), but every cell sets train.r1
    f = write(tmp_path / "r1.yaml", "base: configs/ablations/base.yaml\noverrides: [train.r1_every=4]\n"
                                    "variants: {g1: [train.r1=1], g3: [train.r1=3]}\n")
    assert [j.cell for j in plan(load_ablation(f), build_data=False)] == ["g1", "g3"]


@pytest.mark.parametrize("text, says", [
    ("grid: {train.loss: [bce]}\n", "expected a mapping with at least `base"),
    ("base: configs/quick.yaml\ngrid: {train.loss: [bce, nope]}\n", "cell loss=nope: train.loss: 'nope' is not one of"),
    ("base: configs/quick.yaml\nvariants: {a: [train.loss]}\n", "variants.a: expected a list of KEY=VALUE"),
    ("base: configs/nope.yaml\n", "base configs/nope.yaml: no such preset"),
    ("base: configs/quick.yaml\nseeds: 0\n", "seeds: expected an integer >= 1"),
    ("base: configs/quick.yaml\ngrids: {}\n", "unknown key(s) grids"),
    ("base: configs/quick.yaml\nseeds: null\n", "seeds: expected an integer >= 1, got None"),
    ("base: configs/quick.yaml\nevaluate: {args: --bernoulli}\n", "evaluate.args: expected a list"),
    ("base: configs/quick.yaml\nevaluate: {args: [--bernouli]}\n", "evaluate.args: unrecognized arguments: --bernouli"),
    ("base: configs/quick.yaml\nvariants: {a: {evaluate: [--threshold, x]}}\n",
     "variants.a.evaluate: argument --threshold: invalid float value: 'x'"),
    ("base: configs/quick.yaml\nevaluate: {checkpoint: first}\n", "evaluate.checkpoint: expected last or best, got 'first'"),
    ("base: configs/quick.yaml\nevaluate: {checkpoint: best}\noverrides: [run.metrics_every=0]\nvariants: {a: []}\n",
     "cell a: evaluate.checkpoint best needs run.metrics_every > 0 and run.keep_best"),
    ("base: configs/quick.yaml\ngrid: {data.meter: [6/8]}\n", "data.meter=6/8 trains on windows in 6/8, but run.meter=4/4"),
])
def test_bad_ablation_files_are_one_line(tmp_path, text, says):
    f = write(tmp_path / "bad.yaml", text)
    with pytest.raises(UserError) as e:
        plan(load_ablation(f), build_data=False)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_best_checkpoint_is_scored_when_the_file_asks_and_a_run_scored_otherwise_is_not_taken_as_done(tmp_path):
    from apollogan.ablate import _finished

    jobs = {}
    for which in ("last", "best"):
        f = write(tmp_path / f"{which}.yaml", f"base: configs/quick.yaml\nevaluate: {{checkpoint: {which}}}\n"
                                                "variants: {a: []}\n")
        jobs[which] = plan(load_ablation(f), build_data=False)[0]
    ckpt = jobs["best"].eval_cmd[jobs["best"].eval_cmd.index("--checkpoint") + 1]
    assert ckpt == str(Path(jobs["best"].ckpt_dir) / "best.pt")
    assert jobs["last"].eval_cmd[jobs["last"].eval_cmd.index("--checkpoint") + 1] == str(Path(jobs["last"].ckpt_dir) / "last.pt")
    # a finished run scored at its last checkpoint does not count as done for a file that scores best.pt
    job = jobs["best"]
    job.cwd = str(tmp_path)
    final = tmp_path / job.run_dir / "final.json"
    final.parent.mkdir(parents=True)
    final.write_text(json.dumps({"evaluate_args": [], "evaluated_checkpoint": "last", "config": job.config,
                                 "steps": job.steps}))
    with pytest.raises(UserError, match="evaluated at its last checkpoint; remove .* to evaluate its best one"):
        _finished(job)
    final.write_text(json.dumps({"evaluate_args": [], "evaluated_checkpoint": "best", "config": job.config,
                                 "steps": job.steps}))
    assert _finished(job)["evaluated_checkpoint"] == "best"


def test_dry_run_prints_every_train_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ablate_main([str(SMOKE), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    cmds = [ln for ln in out if ln.startswith("python -m apollogan.train")]
    assert len(cmds) == 4 and out[0].startswith("smoke: 2 cells x 2 seeds = 4 runs")
    assert sum("train.loss=hinge" in c for c in cmds) == 2 and sum("run.name=loss=bce-s1" in c for c in cmds) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "chunks").exists()  # nothing trained or built
    monkeypatch.chdir(REPO)  # one cell, one seed: singular counts; a cell without overrides of its own
    for extra, says in (("", "(the base preset)"), ("overrides: [train.lr_d=1e-4]\n", "(the file's overrides only)")):
        one = write(tmp_path / "one.yaml", f"base: configs/quick.yaml\n{extra}variants: {{a: []}}\n")
        assert ablate_main([str(one), "--dry-run"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[:2] == [f"one: 1 cell x 1 seed = 1 run in {Path('runs/ablations/one')}", f"  a: {says}"]
        assert ("train.lr_d=1e-4" in out[2]) == bool(extra)


def run_ablate(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "apollogan.ablate", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_smoke_ablation_writes_results_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    r = run_ablate(tmp_path, SMOKE, "--jobs", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    base = tmp_path / "runs" / "ablations" / "smoke"
    rows = list(csv.DictReader(open(base / "results.csv")))
    assert [(x["cell"], x["seed"]) for x in rows] == [("loss=bce", "0"), ("loss=bce", "1"), ("loss=hinge", "0"),
                                                      ("loss=hinge", "1")]
    for x in rows:
        assert x["steps"] == "20" and float(x["wall_s"]) > 0 and float(x["samples_per_s"]) > 0
        assert 0 <= float(x["qualified_note_rate_q2"]) <= 1 or x["qualified_note_rate_q2"] == "nan"
        assert {"overall", "groove_consistency_gap", "memorisation_above_0.8"} <= set(x)
        assert 0 <= float(x["pair_iou"]) <= 1
        assert "train.loss=" in x["overrides"]
    finals = {x["run"]: json.loads((base / x["run"] / "final.json").read_text()) for x in rows}
    assert all(f["evaluation"]["samples"] == 200 and f["evaluation"]["meter"] == "4/4" for f in finals.values())
    assert len({f["evaluation"]["overall"] for f in finals.values()}) > 1  # seeds and cells differ
    # every result names the commit it ran at (none outside a git checkout), as results.csv does
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else None
    assert all(f["commit"] == commit and isinstance(f["dirty"], bool) == (commit is not None) for f in finals.values())
    assert all(x["commit"].startswith((commit or "")[:12]) and x["commit"].endswith("-dirty") == bool(finals[x["run"]]["dirty"])
               for x in rows)
    md = (base / "summary.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| loss=")]
    assert len(table) == 4 and all("| 2 |" in ln and " ± " in ln for ln in table)  # headline and every metric
    assert md.count("**") >= 2 and "| real (validation) |" in md
    head = next(ln for ln in md.splitlines() if ln.startswith("| cell |"))
    real = next(ln for ln in md.splitlines() if ln.startswith("| real (validation) |"))
    assert head.rstrip(" |").split(" | ")[-5] == "pair_iou"  # before the cost columns, with the real figure
    assert real.split(" | ")[-5] not in ("", " ")
    assert (base / "loss=bce-s0" / "final").is_dir()  # the HParams record
    assert (tmp_path / "chunks" / "nottingham" / "manifest.json").is_file()

    stamp = {k: (base / k / "final.json").stat().st_mtime_ns for k in finals}
    # interrupt one run: its last checkpoint goes back to step 10 and its figures are lost
    ck = tmp_path / "checkpoints" / "ablations" / "smoke" / "loss=hinge-s1"
    (base / "loss=hinge-s1" / "final.json").unlink()
    (ck / "last.pt").unlink()
    os.link(ck / "step-0000010.pt", ck / "last.pt")
    # a run made before a config key existed counts that key at its default: still finished
    f = base / "loss=bce-s1" / "final.json"
    doc = json.loads(f.read_text())
    assert doc["config"]["model"].pop("fc_dim") == 512  # at its default in the smoke preset
    f.write_text(json.dumps(doc))
    stamp["loss=bce-s1"] = f.stat().st_mtime_ns
    r = run_ablate(tmp_path, SMOKE)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("finished before") == 3, r.stdout
    log = (base / "loss=hinge-s1" / "train.log").read_text()
    assert "--resume" in log and "train.steps=20" in log
    again = json.loads((base / "loss=hinge-s1" / "final.json").read_text())
    assert again["steps"] == 20 and torch.load(ck / "last.pt", weights_only=True)["step"] == 20
    assert all((base / k / "final.json").stat().st_mtime_ns == stamp[k] for k in finals if k != "loss=hinge-s1")
    # a finished run whose resolved config differs (its base preset was edited) is not taken as done
    f = base / "loss=bce-s0" / "final.json"
    doc = json.loads(f.read_text())
    doc["config"]["train"]["lr_g"] = 0.5
    f.write_text(json.dumps(doc))
    r = run_ablate(tmp_path, SMOKE)
    assert r.returncode == 2 and "loss=bce-s0: " in r.stderr and "made with another config" in r.stderr


def test_submitit_local_executor_runs_the_same_jobs(tmp_path):
    pytest.importorskip("submitit")
    r = run_ablate(tmp_path, SMOKE, "--executor", "submitit-local", "--seeds", "1", "--jobs", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    base = tmp_path / "runs" / "ablations" / "smoke"
    assert sorted(p.parent.name for p in base.glob("*/final.json")) == ["loss=bce-s0", "loss=hinge-s0"]
    assert len(list(csv.DictReader(open(base / "results.csv")))) == 2
    assert list((base / "submitit").glob("*_result.pkl"))  # the jobs went through submitit


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has Slurm: the jobs would be submitted")
def test_slurm_executor_without_slurm_says_so_in_one_line(tmp_path):
    pytest.importorskip("submitit")
    r = run_ablate(tmp_path, SMOKE, "--executor", "slurm", "--seeds", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: --executor slurm: submitting failed: ")
    assert not (tmp_path / "runs" / "ablations" / "smoke" / "results.csv").exists()


def tiny(tmp_path, chunks, *extra):
    return load_config(None, [f"data.root={chunks}", "model.width=4", "model.fc_dim=16", "train.batch_size=4",
                              "train.steps=2", "run.log_every=1", "run.sample_every=2", "run.checkpoint_every=2",
                              "run.num_samples=4", "run.audio_samples=1", f"run.runs_dir={tmp_path}/runs",
                              f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=t", *extra])


QUIET = dict(log=lambda *a, **k: None, progress=False)


@pytest.mark.parametrize("extra, says", [
    (["data.onset=true"], "data.onset=true (the shards have false)"),
    (["data.transpose=2", "data.time_shifts=[4]"], "data.transpose=2 (the shards have 0), data.time_shifts=[4]"),
    (["data.key_normalize=true"], "data.key_normalize=true (the shards have false)"),
])
def test_train_refuses_shards_made_otherwise_than_the_config_says(tmp_path, chunks, extra, says):
    with pytest.raises(UserError) as e:
        train(tiny(tmp_path, chunks, *extra), **QUIET)
    assert says in str(e.value) and str(chunks) in str(e.value)


def test_fixed_run_names_and_train_json(tmp_path, chunks):
    out = train(tiny(tmp_path, chunks, "run.numbered=false", "data.meter=4/4"), **QUIET)
    assert out["run_name"] == "t" and (tmp_path / "ckpt" / "t" / "last.pt").is_file()
    info = json.loads((tmp_path / "runs" / "t" / "train.json").read_text())
    assert info["steps"] == 2 and info["samples_per_s"] > 0 and info["elapsed_s"] > 0
    with pytest.raises(UserError, match="run t exists; continue it with --resume"):
        train(tiny(tmp_path, chunks, "run.numbered=false"), **QUIET)
    with pytest.raises(UserError, match="data.meter=5/4: .* has no training window in that meter"):
        train(tiny(tmp_path / "b", chunks, "data.meter=5/4", "run.meter=5/4"), **QUIET)


def test_free_samples_are_compared_with_validation_windows_of_their_meter(chunks):
    val = ShardSet(chunks, "val")
    r = val.records
    in44 = int(((r["ts_num"] == 4) & (r["ts_den"] == 4)).sum())
    in68 = int(((r["ts_num"] == 6) & (r["ts_den"] == 8)).sum())
    assert 0 < in44 < len(val) and in68 > 0  # the fixture mixes meters
    rolls = val.get(np.arange(8)).astype(bool)
    a = evaluate_rolls(rolls, chunks, 16, progress=False, memo=False, meter=(4, 4))
    b = evaluate_rolls(rolls, chunks, 12, progress=False, memo=False, meter=(6, 8))
    c = evaluate_rolls(rolls, chunks, 16, progress=False, memo=False)
    assert (a["real_windows"], b["real_windows"], c["real_windows"]) == (in44, in68, len(val))
    assert a["metrics"]["groove_consistency"]["real_mean"] != c["metrics"]["groove_consistency"]["real_mean"]
    with pytest.raises(UserError, match=r"no validation window in 5/4 to compare with \(its meters: 3/4 \(41\), .*4/4 \(6\)"):
        evaluate_rolls(rolls, chunks, 20, progress=False, memo=False, meter=(5, 4))


def test_binary_neurons_are_binary_forward_and_pass_the_sigmoid_gradient_back():
    spec = RollSpec()
    torch.manual_seed(0)
    plain = Generator(spec, width=4)
    for mode in ("deterministic", "stochastic"):
        g = Generator(spec, width=4, binary=mode)
        g.load_state_dict(plain.state_dict())
        z = g.noise(3)
        out = g(z)
        assert set(out.unique().tolist()) <= {0.0, 1.0} and 0 < out.mean() < 1
        p = plain(z)
        if mode == "deterministic":
            assert torch.equal(out, (p >= 0.5).float())
        w = torch.randn_like(p)
        (gp,) = torch.autograd.grad((p * w).sum(), plain.net[-2].bias)
        (gb,) = torch.autograd.grad((out * w).sum(), g.net[-2].bias)
        assert torch.allclose(gp, gb, atol=1e-6)  # straight through: the same gradient as the probabilities
        g.eval()
        plain.eval()
        assert torch.equal(g(z), plain(z))  # in eval mode: probabilities, binarised by the sampler
        plain.train()


def test_plain_straight_through_passes_the_output_gradient_to_the_logits():
    spec = RollSpec()
    torch.manual_seed(0)
    plain = Generator(spec, width=4)
    g = Generator(spec, width=4, binary="deterministic", binary_grad="identity")
    g.load_state_dict(plain.state_dict())
    z = g.noise(3)
    out = g(z)
    assert torch.equal(out, (plain(z) >= 0.5).float())  # the same 0/1 forward
    w = torch.randn_like(out)
    (gl,) = torch.autograd.grad((plain(z, logits=True) * w).sum(), plain.net[-2].bias)
    (gb,) = torch.autograd.grad((out * w).sum(), g.net[-2].bias)
    assert torch.allclose(gl, gb, atol=1e-4)  # as if the output were the logits themselves
    p = plain(z)
    (gs,) = torch.autograd.grad((p * w).sum(), plain.net[-2].bias)
    assert not torch.allclose(gs, gb, atol=1e-2)  # not the sigmoid-adjusted gradient


def test_nearest_upsampling_generator_keeps_the_shapes_without_transposed_convolutions():
    spec = RollSpec(onset=True)
    ref, near = Generator(spec, width=4), Generator(spec, width=4, upsample="nearest")
    kinds = lambda g: {type(m).__name__ for m in g.modules()}  # noqa: E731
    assert "ConvTranspose2d" in kinds(ref) and "ConvTranspose2d" not in kinds(near) and "Upsample" in kinds(near)
    z = near.noise(2)
    assert near(z).shape == ref(z).shape == (2, 2, 64, 256)
    cfg = load_config(None, ["model.g_upsample=nearest", "model.width=4", "model.binary=deterministic"])
    from apollogan.models.dcgan import build_models

    g, _ = build_models(spec, cfg.model)
    assert "Upsample" in kinds(g) and g.binary == "deterministic"  # the config reaches the built generator


def test_ctrl_c_stops_a_local_ablation_saves_the_running_run_and_starts_no_other(tmp_path, chunks):
    import signal
    import time

    f = write(tmp_path / "long.yaml", f"""
base: configs/quick.yaml
seeds: 2
steps: 5000
overrides: [data.root={chunks}, data.key_normalize=false, model.width=4, model.d_width=4, train.batch_size=4,
            run.log_every=10, run.sample_every=5000, run.checkpoint_every=20, run.metrics_every=0, run.num_samples=4,
            run.audio_samples=1]
evaluate: {{num: 16}}
variants: {{a: []}}
""")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "apollogan.ablate", str(f)], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ck = tmp_path / "checkpoints" / "ablations" / "long"
    runs = tmp_path / "runs" / "ablations" / "long"
    try:
        deadline = time.time() + 300
        while not list(ck.glob("a-s0/step-*.pt")) and time.time() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-2000:]
        p.send_signal(signal.SIGINT)  # to the runner alone, as a terminal's Ctrl-C now reaches it
        out, err = p.communicate(timeout=120)
        assert p.returncode == 130, err[-2000:]
        assert "stopped: 0 of 2 runs finished, 1 stopped and saved (a-s0), 1 not started" in err, err[-2000:]
        assert "Traceback" not in err
        step = torch.load(ck / "a-s0" / "last.pt", weights_only=True)["step"]
        assert 20 <= step < 5000  # saved when it stopped, between two steps
        assert "interrupted at step" in (runs / "a-s0" / "train.log").read_text()
        assert not (ck / "a-s1").exists() and not (runs / "a-s1").exists()
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("body", ["grid: {train.seed: [3, 7]}", "variants: {a: [train.seed=3]}",
                                  "overrides: [train.seed=3]\nvariants: {a: []}"])
def test_a_seed_in_the_cells_is_refused_since_the_runner_sets_it(tmp_path, body):
    f = write(tmp_path / "seeds.yaml", f"base: configs/quick.yaml\n{body}\n")
    with pytest.raises(UserError, match="train.seed is set by the runner for every run"):
        load_ablation(f)
