"""Model families: each trains, resumes bit-exactly, samples to MIDI and is scored; their own known answers."""
import json
import math
from pathlib import Path

import mido
import numpy as np
import pytest
import torch

from apollogan.checkpoint import family_from_checkpoint, load_checkpoint
from apollogan.cli import UserError
from apollogan.config import FAMILY_CONFIGS, load_config
from apollogan.models import FAMILIES, build_family
from apollogan.models.common import from_frames, to_frames
from apollogan.models.lstm import frame_counts, top_p_filter
from apollogan.models.vae import kl_divergence, note_f1
from apollogan.spec import RollSpec
from apollogan.train import train

QUIET = dict(log=lambda *a, **k: None, progress=False)


def tiny(tmp_path, chunks, family, *extra):
    return load_config(None, [f"model.family={family}", *FAMILY_CONFIGS[family].smoke, f"data.root={chunks}",
                              "train.batch_size=4", "train.steps=6", "run.log_every=2", "run.sample_every=3",
                              "run.checkpoint_every=3", "run.num_samples=4", "run.audio_samples=1",
                              "run.metrics_every=6", "run.metrics_samples=8", "run.val_windows=16",
                              f"run.runs_dir={tmp_path}/runs", f"run.checkpoints_dir={tmp_path}/ckpt",
                              f"run.name={family}", *extra])


def signature(modules: dict) -> dict:
    """Every parameter's name and shape, per module: what tells one family's networks from another's."""
    return {m: {k: tuple(v.shape) for k, v in sd.items()} for m, sd in modules.items()}


def test_the_registry_names_each_family_with_its_own_config_and_kind():
    from apollogan.config import GAN_FAMILIES
    from apollogan.models.gan import GANFamily

    assert {"dcgan", "lstm", "vae", "ae", "lstm_gan", "cond_gan"} <= set(FAMILIES) == set(FAMILY_CONFIGS)
    for name, (cls, conf) in FAMILIES.items():
        assert conf().family == name and conf.smoke, name
        assert (name in GAN_FAMILIES) == issubclass(cls, GANFamily), name
    assert set(GAN_FAMILIES) == {"dcgan", "lstm_gan", "cond_gan"}  # the adversarial ones, and only they


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_trains_resumes_bit_exactly_and_samples_to_midi(tmp_path, request, family):
    conditional = FAMILIES[family][0] is FAMILIES["cond_gan"][0]  # draws melodies over given chords: parts data
    chunks = request.getfixturevalue("parts_chunks" if conditional else "chunks")
    straight = train(tiny(tmp_path / "a", chunks, family), **QUIET)
    half = train(tiny(tmp_path / "b", chunks, family, "train.steps=3"), **QUIET)
    resumed = train(tiny(tmp_path / "b", chunks, family), resume=Path(half["checkpoint"]), **QUIET)
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    assert a["family"] == family and b["step"] == 6 and b["run_name"] == half["run_name"]
    for part in ("modules", "ema"):
        for name, sd in a[part].items():
            for k in sd:
                assert torch.equal(sd[k], b[part][name][k]), (part, name, k)
    spec = RollSpec.from_dict(a["spec"])
    # the run built this family's networks, not another's: every other family's tiny networks differ
    for other in FAMILIES:
        if other != family:
            try:
                built = build_family(spec, tiny(tmp_path / "x", chunks, other))
            except ValueError:  # a family that refuses these rolls (cond_gan without parts) cannot have trained
                continue
            assert signature({k: m.state_dict() for k, m in built.modules.items()}) != signature(a["modules"]), other
    torch.manual_seed(0)  # the loop builds the networks from train.seed (0 here)
    fresh = build_family(spec, load_config(base=a["config"]))
    assert signature({k: m.state_dict() for k, m in fresh.modules.items()}) == signature(a["modules"])
    moved = [(m, k) for m, net in fresh.modules.items() for k, v in net.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, a["modules"][m][k])]
    assert moved, "training left the weights where they started"
    # training returned finite figures, and the family's own validation figures where it has them
    assert all(math.isfinite(v) for k, v in straight.items() if k.startswith("Loss/"))
    if family == "lstm":
        assert 0 < straight["Val/nll_per_frame"] < 64 * math.log(2) + 1 and 0 <= straight["Val/frame_accuracy"] <= 1
    if family in ("vae", "ae"):
        assert 0 <= straight["Val/recon_note_f1"] <= 1 and ("Val/kl" in straight) == (family == "vae")
        code = a["modules"]["model"]["encoder.head.1.weight"].shape[0]  # mean and log-variance, or the code
        assert code == (16 if family == "vae" else 8)

    from apollogan.generate import main as generate

    out = tmp_path / "gen"
    assert generate(["--checkpoint", straight["checkpoint"], "--num", "3", "--out", str(out), "--threshold", "0"]) == 0
    mids = sorted(out.glob("sample-*.mid"))
    assert len(mids) == 3
    for m in mids:
        assert mido.MidiFile(m).length > 0
    if family != "lstm":  # a threshold of 0 turns every cell on: every pitch of the (melody) part sounds
        notes = [x for x in mido.MidiFile(mids[0]).tracks[0] if x.type == "note_on" and x.velocity > 0]
        assert len(notes) >= 64


def test_evaluate_scores_an_lstm_with_its_likelihood(tmp_path, chunks):
    out = train(tiny(tmp_path, chunks, "lstm"), **QUIET)
    from apollogan.evaluate import main as evaluate

    assert evaluate(["--checkpoint", out["checkpoint"], "--num", "16", "--out", str(tmp_path / "e.json"),
                     "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["family"] == "lstm" and res["samples"] == 16
    with pytest.raises(UserError, match="--device tpu: not a device"):
        evaluate(["--checkpoint", out["checkpoint"], "--device", "tpu"])
    v = res["validation"]
    assert v["windows"] > 0 and 0 < v["Val/nll_per_frame"] < 64 * math.log(2) + 1
    assert "overall" in res and "above_0.8" in res["memorisation"]


def test_lstm_sampling_keeps_the_primer_and_then_composes(chunks):
    torch.manual_seed(0)
    fam = build_family(RollSpec(), load_config(None, ["model.family=lstm", "model.hidden=8"]))
    fam.modules["model"].eval()  # as generate and the training loop's moving average have it: no dropout
    real = torch.zeros(3, 1, 64, 256)
    real[:, 0, 30, :] = 1  # one held pitch
    real[1, 0, 40, 5:9] = 1
    out = fam.sample(3, torch.Generator().manual_seed(0), real=real, prime=16)
    assert out.shape == (3, 1, 64, 256) and set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out[..., :16], real[..., :16])
    # an untrained model gives p about 0.5 per cell: about half the cells after the primer are on
    assert 0.35 < out[..., 16:].mean().item() < 0.65
    again = fam.sample(3, torch.Generator().manual_seed(0), real=real, prime=16)
    assert torch.equal(out, again)  # the draws come from the generator alone
    silent = fam.sample(2, torch.Generator().manual_seed(1), prime=0, temperature=0)
    assert torch.equal(silent[0], silent[1])  # no draw at temperature 0: the same roll every time
    with pytest.raises(ValueError, match="real windows"):
        fam.sample(2, torch.Generator(), prime=4)


def test_top_p_keeps_the_most_probable_cells_holding_the_share():
    p = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    assert torch.equal(top_p_filter(p, 0.8), torch.tensor([[0.0, 0.5, 0.0, 0.3]]))
    assert torch.equal(top_p_filter(p, 0.81), torch.tensor([[0.0, 0.5, 0.15, 0.3]]))
    assert torch.equal(top_p_filter(p, 1.0), p)
    assert torch.equal(top_p_filter(p, 0.1), torch.tensor([[0.0, 0.5, 0.0, 0.0]]))  # the most probable stays


def test_frame_accuracy_counts_and_nll_of_a_coin():
    # frames [1, 2, 3]: truth and prediction over 3 cells of the sustain channel, one extra (onset) cell ignored
    truth = torch.tensor([[[1.0, 0, 0, 1], [1, 1, 0, 0]]])
    logits = torch.tensor([[[5.0, 5, -5, -5], [-5, 5, -5, 5]]])
    tp, fp, fn = frame_counts(logits >= 0, truth, cells=3).tolist()
    assert (tp, fp, fn) == (2, 1, 1)  # Bay et al.: accuracy 2 / 4
    fam = build_family(RollSpec(), load_config(None, ["model.family=lstm", "model.hidden=4", "model.layers=1"]))
    with torch.no_grad():
        for p in fam.modules["model"].parameters():
            p.zero_()  # every logit 0: p = 1/2 for each of the 64 cells
    val = fam.validate(torch.zeros(2, 1, 64, 256))
    assert val["Val/nll_per_frame"] == pytest.approx(64 * math.log(2), rel=1e-6)
    assert val["Val/frame_accuracy"] == 0.0  # p = 1/2 counts as on: every cell a false positive, no true one


def test_frames_round_trip_and_keep_channels_apart():
    x = torch.zeros(2, 2, 64, 256)
    x[0, 1, 3, 7] = 1  # onset channel, pitch 3, step 7
    f = to_frames(x)
    assert f.shape == (2, 256, 128) and f[0, 7, 64 + 3] == 1 and f.sum() == 1
    assert torch.equal(from_frames(f, 2, 64), x)


def test_kl_and_reconstruction_f1_known_values():
    assert kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).tolist() == [0.0, 0.0]
    assert kl_divergence(torch.tensor([[2.0]]), torch.tensor([[0.0]])).item() == pytest.approx(2.0)
    ref = np.zeros((1, 1, 64, 256), bool)
    ref[0, 0, 10, 0:4] = ref[0, 0, 20, 8:12] = True  # two notes
    rec = ref.copy()
    rec[0, 0, 20, 12] = True  # the second note one step too long: no longer the same note
    rec[0, 0, 30, 0:2] = True  # an extra note
    assert note_f1(ref, rec, RollSpec()) == (1, 2, 3)  # F1 = 2 * 1 / 5


def test_vae_interpolates_between_the_codes_of_two_windows(chunks):
    torch.manual_seed(0)
    fam = build_family(RollSpec(), load_config(None, ["model.family=vae", "model.width=4", "model.latent_dim=8"]))
    for m in fam.modules.values():
        m.eval()
    ends = torch.zeros(2, 1, 64, 256)
    ends[1, 0, 20:40] = 1
    walk = fam.interpolate(5, torch.Generator(), real=ends)
    model = fam.modules["model"]
    with torch.no_grad():
        direct = model.decode(model.encode(ends)[0])
    assert walk.shape == (5, 1, 64, 256)
    assert torch.allclose(walk[0], direct[0], atol=1e-6) and torch.allclose(walk[-1], direct[1], atol=1e-6)


def test_family_options_are_refused_where_they_do_not_belong(tmp_path, chunks):
    for overrides, msg in [
        (["model.family=lstm", "model.width=8"], "model.width: not an option of model.family=lstm"),
        (["model.family=dcgan", "model.hidden=8"], "belongs to model.family=lstm or lstm_gan"),
        (["model.family=vae", "train.d_steps=2"], "train.d_steps: a GAN option"),
        (["model.family=lstm_gan", "train.lr=0.1"], "train.lr: not an option of the GAN families"),
        (["train.loss=hinge", "train.label_smoothing=0.1"], "smooths the targets of the bce loss"),
        (["model.family=gru"], "model.family: 'gru' is not one of"),
    ]:
        with pytest.raises(UserError, match=msg):
            load_config(None, overrides)
    # a preset of one family overridden to another keeps its shared keys and drops its model keys
    cfg = load_config("configs/quick.yaml", ["model.family=lstm"])
    assert cfg.model.family == "lstm" and cfg.model.hidden == 256 and cfg.train.steps == 1500
    # ... and its GAN-only train keys, while the same key given for the lstm itself is refused
    gan_preset = tmp_path / "gan.yaml"
    gan_preset.write_text("model: {family: dcgan}\ntrain: {r1: 1.0, lr_g: 1.0e-3, steps: 77}\n")
    assert load_config(gan_preset).train.r1 == 1.0
    cfg = load_config(gan_preset, ["model.family=lstm"])
    assert (cfg.train.r1, cfg.train.lr_g, cfg.train.steps) == (0.0, 2e-4, 77)
    with pytest.raises(UserError, match="train.r1: a GAN option"):
        load_config(gan_preset, ["model.family=lstm", "train.r1=1"])
    lstm_preset = tmp_path / "lstm.yaml"
    lstm_preset.write_text("model: {family: lstm}\ntrain: {lr: 0.01, batch_size: 8}\n")
    cfg = load_config(lstm_preset, ["model.family=dcgan"])
    assert (cfg.train.lr, cfg.train.batch_size) == (1e-3, 8)
    # a preset of the same kind keeps every train key, so a stray GAN key is refused, not dropped
    lstm_preset.write_text("model: {family: lstm}\ntrain: {loss: hinge}\n")
    with pytest.raises(UserError, match="train.loss: a GAN option"):
        load_config(lstm_preset, ["model.family=vae"])

    out = train(tiny(tmp_path, chunks, "ae", "train.steps=2"), **QUIET)
    with pytest.raises(UserError, match="the checkpoint is of family ae"):
        train(tiny(tmp_path, chunks, "vae"), resume=Path(out["checkpoint"]), **QUIET)


def test_sampling_options_are_checked_against_the_family(tmp_path, chunks):
    from apollogan.generate import main as generate

    dc = train(tiny(tmp_path / "d", chunks, "dcgan", "train.steps=1"), **QUIET)["checkpoint"]
    ls = train(tiny(tmp_path / "l", chunks, "lstm", "train.steps=1"), **QUIET)["checkpoint"]
    with pytest.raises(UserError, match="--temperature: the dcgan family has no such sampling option"):
        generate(["--checkpoint", dc, "--temperature", "0.5", "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="--interpolate: the lstm family has no latent space"):
        generate(["--checkpoint", ls, "--interpolate", "4", "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="--prime: must be in 0..255"):
        generate(["--checkpoint", ls, "--prime", "256", "--out", str(tmp_path / "x")])
    with pytest.raises(UserError, match="--prime 16 needs real windows"):
        generate(["--checkpoint", ls, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert generate(["--checkpoint", ls, "--prime", "0", "--top-p", "0.9", "--data", str(tmp_path / "nowhere"),
                     "--num", "2", "--out", str(tmp_path / "silence")]) == 0


def test_family_from_checkpoint_uses_the_moving_average_unless_raw(tmp_path, chunks):
    ck = load_checkpoint(train(tiny(tmp_path, chunks, "lstm"), **QUIET)["checkpoint"])
    fam, spec, cfg = family_from_checkpoint(ck)
    raw, _, _ = family_from_checkpoint(ck, ema=False)
    k = "lstm.weight_ih_l0"
    assert torch.equal(fam.modules["model"].state_dict()[k], ck["ema"]["model"][k])
    assert torch.equal(raw.modules["model"].state_dict()[k], ck["modules"]["model"][k])
    assert not torch.equal(ck["ema"]["model"][k], ck["modules"]["model"][k])
    assert not fam.modules["model"].training


@pytest.mark.parametrize("family", ["lstm", "vae"])
def test_two_process_ddp_trains_a_likelihood_family(tmp_path, chunks, family):
    import os
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
                        "-m", "apollogan.train", f"model.family={family}", *FAMILY_CONFIGS[family].smoke, f"data.root={chunks}",
                        "train.batch_size=4", "train.steps=4", "run.log_every=2", "run.sample_every=4",
                        "run.checkpoint_every=4", "run.val_windows=8", "run.metrics_samples=4",
                        f"run.runs_dir={tmp_path}/runs", f"run.checkpoints_dir={tmp_path}/ckpt", "run.name=ddp"],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ckpt" / "ddp-001" / "last.pt")
    assert ck["family"] == family and ck["step"] == 4 and ck["world"] == 2 and len(ck["rng"]) == 2


@pytest.mark.parametrize("loss", [["train.loss=hinge"], ["train.loss=wgan-gp", "train.d_steps=2"]])
def test_lstm_gan_trains_with_the_critic_losses(tmp_path, chunks, loss):
    out = train(tiny(tmp_path, chunks, "lstm_gan", "train.steps=2", "run.log_every=1", *loss), **QUIET)
    assert math.isfinite(out["Loss/D"]) and math.isfinite(out["Loss/G"])
    assert "Critic/real_mean" in out and "D(x)" not in out  # a critic's scores are no probabilities


def test_the_generator_step_leaves_d_weights_alone(chunks):
    """D's weights get gradients from D's own step only; they are trainable again afterwards."""
    from apollogan.models import StepContext

    torch.manual_seed(0)
    cfg = load_config(None, [*FAMILY_CONFIGS["dcgan"].smoke, "train.batch_size=4", "train.feature_matching=0.5"])
    fam = build_family(RollSpec(), cfg)
    D = fam.modules["D"]
    calls = {}
    for name, p in D.named_parameters():
        p.register_hook(lambda g, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    real = (torch.rand(4, 1, 64, 256) < 0.06).float()
    ctx = StepContext(nets=fam.modules, optimizers=fam.optimizers(), real_batch=lambda: real,
                      generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    fam.train_step(ctx)
    assert calls and set(calls.values()) == {2}  # the real and the fake backward of the D step, nothing more
    assert all(p.requires_grad for p in D.parameters())


@pytest.mark.parametrize("family", ["lstm", "vae"])
def test_best_raw_scores_the_raw_model_of_every_family_without_changing_its_training(tmp_path, chunks, family):
    extra = ["run.metrics_every=3", "run.checkpoint_every=3"]
    off = train(tiny(tmp_path / "off", chunks, family, *extra), **QUIET)
    on = train(tiny(tmp_path / "on", chunks, family, *extra, "run.best_raw=true"), **QUIET)
    assert math.isfinite(on["Metrics/raw/train/overall"]) and "Metrics/raw/train/overall" not in off
    a, b = load_checkpoint(off["checkpoint"]), load_checkpoint(on["checkpoint"])
    assert all(torch.equal(a["modules"]["model"][k], v) for k, v in b["modules"]["model"].items())
    best = load_checkpoint(Path(on["checkpoint"]).parent / "best.pt")
    same = all(torch.equal(best["ema"]["model"][k], v) for k, v in best["modules"]["model"].items())
    assert on["best"]["weights"] in ("ema", "raw") and same == (on["best"]["weights"] == "raw")
