"""Checkpoints: code in a foreign file never runs, first-release files keep working, DDP stops together."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from apollogan.checkpoint import load_checkpoint
from apollogan.cli import UserError
from apollogan.config import load_config
from apollogan.train import train

# Written by apollogan 0.1.0 (keys G, D, G_ema, opt_g, opt_d; numpy RNG state): a width-4 DCGAN
# trained 6 steps on the first 40 bundled tunes, windows every 64 steps, 20% validation.
LEGACY = Path(__file__).parent / "data" / "legacy-dcgan-0.1.0.pt"


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_module(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "last.pt"
    torch.save({"G": RunsCode(marker), "config": {}, "spec": {}}, bad)
    with pytest.raises(UserError, match="refused: .* could run code .*GLOBAL posix.system"):
        load_checkpoint(bad)
    text = tmp_path / "notes.pt"
    text.write_text("garbage\n")  # unreadable, but asks for nothing to run: not called dangerous
    with pytest.raises(UserError, match=r"not a readable checkpoint \(UnpicklingError: Unsupported operand"):
        load_checkpoint(text)
    r = run_module("apollogan.generate", "--checkpoint", bad, "--out", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: {bad}: refused")
    assert not marker.exists()


GOOD = {"format": "apollogan-checkpoint", "family": "dcgan", "modules": {}, "ema": {}, "optimizers": {},
        "config": {}, "spec": {}, "step": 1, "batches": 1, "run_name": "r", "rng": []}


@pytest.mark.parametrize("content, msg", [([1, 2], "not a dict"), ({"G": 1, "D": 2}, "G or D is not a state dict"),
                                          ({"x": torch.zeros(1)}, "missing its format tag"),
                                          ({**GOOD, "family": ["dcgan"]}, "unknown model family"),
                                          ({**GOOD, "spec": {"bogus": 1}}, "its spec: unknown spec keys"),
                                          ({**GOOD, "spec": {"pitches": "x"}}, "its spec"),
                                          ({**GOOD, "ema": {"G": {"w": 1}}}, "ema holds more than tensors"),
                                          ({**GOOD, "batches": None}, "no batches")])
def test_plain_files_that_are_no_checkpoint_are_named(tmp_path, content, msg):
    torch.save(content, tmp_path / "f.pt")
    with pytest.raises(UserError, match=msg):
        load_checkpoint(tmp_path / "f.pt")


def test_a_first_release_checkpoint_generates_evaluates_and_resumes(tmp_path, chunks):
    ck = load_checkpoint(LEGACY)
    assert ck["family"] == "dcgan" and set(ck["modules"]) == {"G", "D"} and set(ck["ema"]) == {"G"}
    assert ck["step"] == 6 and not ck["config"]["model"].get("family")  # it predates families
    raw = torch.load(LEGACY, weights_only=False)  # the trusted fixture, read the old way to compare
    assert torch.equal(ck["ema"]["G"]["net.0.weight"], raw["G_ema"]["net.0.weight"])

    from apollogan.evaluate import main as evaluate
    from apollogan.generate import main as generate

    assert generate(["--checkpoint", str(LEGACY), "--num", "2", "--out", str(tmp_path / "g"), "--threshold", "0"]) == 0
    assert len(list((tmp_path / "g").glob("*.mid"))) == 2
    # the moving average made to turn every cell on, the raw weights left alone: --raw picks the latter
    bright = dict(ck, ema={"G": dict(ck["ema"]["G"])})
    last = max((k for k in bright["ema"]["G"] if k.endswith(".bias")), key=lambda k: int(k.split(".")[1]))
    bright["ema"]["G"][last] = torch.full_like(bright["ema"]["G"][last], 20.0)
    torch.save(bright, tmp_path / "bright.pt")
    for extra, name in (([], "ema.json"), (["--raw"], "raw.json")):
        assert evaluate(["--checkpoint", str(tmp_path / "bright.pt"), "--data", str(chunks), "--num", "8",
                         "--no-memorisation", "--out", str(tmp_path / name), *extra]) == 0
    ema, raw_ev = (json.loads((tmp_path / n).read_text()) for n in ("ema.json", "raw.json"))
    assert raw_ev["source"].endswith("(raw weights)") and not ema["source"].endswith("(raw weights)")
    assert ema["metrics"]["note_density"]["generated_mean"] == 1.0
    assert raw_ev["metrics"]["note_density"]["generated_mean"] < 0.01

    cfg = load_config(None, [f"data.root={chunks}", "train.steps=8", f"run.runs_dir={tmp_path}/runs",
                             f"run.checkpoints_dir={tmp_path}/ckpt"], base=ck["config"])
    out = train(cfg, resume=LEGACY, log=lambda *a, **k: None, progress=False)
    new = load_checkpoint(out["checkpoint"])
    assert new["step"] == 8 and new["run_name"] == raw["run_name"] and new["family"] == "dcgan"
    assert not torch.equal(new["modules"]["G"]["net.0.weight"], raw["G"]["net.0.weight"])
    assert all(torch.isfinite(torch.tensor(out[k])) for k in ("Loss/D", "Loss/G"))


POISON = """
import os, sys
import apollogan.models.gan as gan
real, calls = gan.generator_loss, {"n": 0}
def poisoned(kind, fake):
    calls["n"] += 1
    bad = os.environ["RANK"] == "1" and calls["n"] == 3  # rank 1 alone, at step 3
    return real(kind, fake) * (float("nan") if bad else 1.0)
gan.generator_loss = poisoned
from apollogan.cli import run
from apollogan.train import main
run(lambda: main(sys.argv[1:]))
"""


def test_ddp_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path, chunks):
    script = tmp_path / "poisoned_train.py"
    script.write_text(POISON)
    r = run_module("torch.distributed.run", "--nproc_per_node=2", "--master_port=29518", script,
                   f"data.root={chunks}", "model.width=4", "model.fc_dim=16", "train.batch_size=4", "train.steps=6",
                   "run.log_every=2", "run.sample_every=6", "run.checkpoint_every=2", f"run.runs_dir={tmp_path}/runs",
                   f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=ddp", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode != 0
    assert r.stderr.count("error: non-finite loss at step 3") == 2, r.stderr[-3000:]  # both ranks, same step
    assert load_checkpoint(tmp_path / "ckpt" / "ddp-001" / "last.pt")["step"] == 2


def _cpu_of_the_fixture() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "AMD EPYC" in info and "avx512_bf16" in info and "amx" not in info and torch.__version__.startswith("2.15")


@pytest.mark.skipif(not _cpu_of_the_fixture(), reason="the fixture's arithmetic (bf16 autocast) was done on an AMD "
                                                      "EPYC with AVX512-BF16 and torch 2.15; other kernels round otherwise")
def test_the_dcgan_trains_bit_identically_to_the_first_release(tmp_path, chunks):
    """The model-families loop replays the first release's 6 steps exactly: same weights, same moving average."""
    raw = torch.load(LEGACY, weights_only=False)
    cfg = load_config(None, [f"data.root={chunks}", f"run.runs_dir={tmp_path}/runs",
                             f"run.checkpoints_dir={tmp_path}/ckpt"], base=raw["config"])
    new = load_checkpoint(train(cfg, log=lambda *a, **k: None, progress=False)["checkpoint"])
    for old, part, name in (("G", "modules", "G"), ("D", "modules", "D"), ("G_ema", "ema", "G")):
        for k, v in raw[old].items():
            assert torch.equal(v, new[part][name][k]), (old, k)
