"""Network shapes and sizes, losses with known values, and the typed config."""
import math

import pytest
import torch

from apollogan.cli import UserError
from apollogan.config import load_config
from apollogan.losses import (
    d_fake_term,
    d_real_term,
    discriminator_loss,
    feature_matching,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from apollogan.models import Generator, build_models, count_params
from apollogan.models.dcgan import ChromaStream, DCGANConfig, Discriminator, MinibatchStd
from apollogan.spec import RollSpec


def test_reference_sizes_match_the_original_experiments():
    g, d = build_models(RollSpec(), DCGANConfig())
    assert 11.0e6 < count_params(g) < 11.3e6 and 14.0e6 < count_params(d) < 14.3e6
    z = g.noise(2)
    assert z.shape == (2, 7, 2, 8)
    x = g(z)
    assert x.shape == (2, 1, 64, 256) and 0 <= x.min() and x.max() <= 1
    logits, feats = d(x, features=True)
    assert logits.shape == (2,) and feats.shape == (2, 128 * 2 * 8)


@pytest.mark.parametrize("kw, spec", [
    (dict(width=8, d_head="fc1"), RollSpec(onset=True)),
    (dict(width=8, d_head="none", d_norm="spectral"), RollSpec()),
    (dict(width=8, noise="flat", noise_dim=10), RollSpec(pitches=32, steps=128)),  # four doublings
    (dict(width=4, noise_channels=3, d_norm="none"), RollSpec()),
])
def test_variants_build_with_computed_sizes(kw, spec):
    g, d = build_models(spec, DCGANConfig(**kw))
    x = g(g.noise(3))
    assert x.shape == (3, *spec.shape)
    assert d(x).shape == (3,)


@pytest.mark.parametrize("upsample, hold, binary", [("transposed", 2, "deterministic"), ("nearest", 2, "deterministic"),
                                                    ("nearest", 4, "deterministic"), ("transposed", 4, "stochastic"),
                                                    ("nearest", 2, "stochastic")])
def test_held_columns_give_notes_of_at_least_hold_steps(upsample, hold, binary):
    torch.manual_seed(0)
    g = Generator(RollSpec(), 4, binary=binary, upsample=upsample, hold=hold).train()
    x = g(g.noise(4))
    assert x.shape == (4, 1, 64, 256) and set(x.unique().tolist()) == {0.0, 1.0}
    cols = x.unflatten(-1, (256 // hold, hold))
    assert (cols == cols[..., :1]).all()  # every column drawn hold times (one draw for stochastic neurons)
    assert not torch.equal(x[..., hold - 1:-1:hold], x[..., hold::hold])  # and only so: columns differ
    on = x[..., 1:] > x[..., :-1]  # a note starts where a cell turns on; on[i] compares steps i and i + 1
    starts = torch.nonzero(on.any(dim=(0, 1, 2)))[:, 0] + 1
    assert len(starts) and (starts % hold == 0).all()  # only on the hold grid
    x.sum().backward()  # the straight-through gradient reaches G's first layer
    first = g.net[0] if upsample == "transposed" else g.net[1]
    assert first.weight.grad.abs().sum() > 0
    assert Generator(RollSpec(), 4, hold=1)(g.noise(1)).shape == (1, 1, 64, 256)
    with pytest.raises(ValueError, match="hold must be 1, 2 or 4"):
        Generator(RollSpec(), 4, hold=3)


def test_held_columns_with_an_onset_channel_start_notes_on_their_first_step_only():
    torch.manual_seed(0)
    spec = RollSpec(onset=True, parts=2, part_mode="tracks")  # channels: sustain, onset, sustain, onset
    g = Generator(spec, 4, binary="deterministic", upsample="nearest", hold=2).train()
    with torch.no_grad():
        g.net[-2].bias.fill_(50.0)  # every cell on before the mask: the mask alone decides the onsets
    x = g(g.noise(2))
    assert x.shape == (2, 4, 64, 256)
    assert x[:, 0::2].all()  # sustain: every step of every held column
    assert x[:, 1::2, :, 0::2].all() and not x[:, 1::2, :, 1::2].any()  # onsets on the first step of each
    assert g(g.noise(1), logits=True)[:, 1::2, :, 1::2].max() < -20  # the logits agree


def test_d_width_sizes_d_alone():
    g, d = build_models(RollSpec(), DCGANConfig(width=16))
    g8, d8 = build_models(RollSpec(), DCGANConfig(width=16, d_width=8))
    assert count_params(g8) == count_params(g) and count_params(d8) < count_params(d) / 2
    assert d8.features[0].out_channels == 8 and d8(g8(g8.noise(2))).shape == (2,)


def test_minibatch_std_known_answer():
    # samples 0 and 2 form one group (i mod B/g), 1 and 3 the other: features 0/2 and 5/5
    x = torch.tensor([0.0, 5.0, 2.0, 5.0]).view(4, 1, 1, 1).expand(4, 1, 2, 3)
    out = MinibatchStd(2)(x)
    assert out.shape == (4, 2, 2, 3) and torch.equal(out[:, :1], x)
    assert out[:, 1].flatten().tolist() == pytest.approx([1.0] * 6 + [1e-4] * 6 + [1.0] * 6 + [1e-4] * 6)
    # a batch the group does not divide: 3 samples with group 2 use groups of 1 (std 0)
    assert MinibatchStd(2)(x[:3])[:, 1].max().item() == pytest.approx(1e-4)
    # the std is averaged over features and positions: one group of 2, stds 1 and 3 -> 2 everywhere
    y = torch.tensor([[0.0, 0.0], [2.0, 6.0]]).view(2, 1, 1, 2)
    assert MinibatchStd(2)(y)[:, 1].flatten().tolist() == pytest.approx([2.0] * 4)
    with pytest.raises(UserError, match="model.d_mbstd: 1 must be 0"):
        load_config(None, ["model.d_mbstd=1"])
    with pytest.raises(UserError, match=r"groups of 4 must divide train.batch_size \(30\)"):
        load_config(None, ["model.d_mbstd=4", "train.batch_size=30"])


@pytest.mark.parametrize("head", ["fc2", "fc1", "none"])
def test_d_mbstd_lets_d_see_the_batch(head):
    # with minibatch std, a sample's logit depends on the rest of its group; without it, it does not
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 256)
    for mbstd, depends in ((0, False), (4, True)):
        _, d = build_models(RollSpec(), DCGANConfig(width=4, d_norm="none", d_head=head, d_mbstd=mbstd))
        d.eval()
        y = x.clone()
        y[1:] = x[0]  # the rest of the batch: copies of sample 0
        assert bool(d(x)[0] == d(y)[0]) is not depends  # exact: without it, sample 0 is computed alone
        # the std map is not a feature: feature matching compares the same [d, 2, 8] (or [8d, 4, 16]) either way
        assert d(x, features=True)[1].shape[1] == (2048 if head == "none" else 64)


def test_chroma_stream_folds_octaves_and_beats():
    spec = RollSpec()  # pitches 30..93, 4 steps per beat
    stream = ChromaStream(spec, 4)
    x = torch.zeros(2, 1, spec.pitches, spec.steps)
    x[0, 0, 36 - spec.low, 0:4] = 1  # C for beat 0
    x[0, 0, 48 - spec.low, 4:6] = 1  # C an octave up for half of beat 1
    x[1, 0, 37 - spec.low, 0:4] = 1  # C# for beat 0
    c = stream.per_beat(x)
    assert c.shape == (2, 12, 64)
    assert c[0, 0, :2].tolist() == [1.0, 0.5] and c[0].sum().item() == 1.5
    assert c[1, 1, 0].item() == 1.0 and c[1].sum().item() == 1.0
    assert stream(x).shape == (2, stream.out_features) == (2, 4 * 4)
    # every channel counts: an onset alone is a sounding cell for the stream
    on = torch.zeros(1, 2, spec.pitches, spec.steps)
    on[0, 1, 38 - spec.low, 4:8] = 1  # D, onset channel only, beat 1
    assert ChromaStream(RollSpec(onset=True), 4).per_beat(on)[0, 2, 1].item() == 1.0
    # D reads the stream beside the convolutions (and beside minibatch std): silencing it moves the logits
    for mbstd in (0, 2):
        _, d = build_models(spec, DCGANConfig(width=4, d_norm="none", d_chroma=4, d_mbstd=mbstd))
        before = d(x)
        assert before.shape == (2,)
        for p in d.chroma.parameters():
            torch.nn.init.zeros_(p)
        assert not torch.equal(before, d(x))
    with pytest.raises(ValueError, match="head 'none'"):
        Discriminator(spec, 4, head="none", chroma=4)
    with pytest.raises(UserError, match="model.d_chroma"):
        load_config(None, ["model.d_chroma=4", "model.d_head=none"])


def test_wrong_shapes_are_refused():
    g, d = build_models(RollSpec(), DCGANConfig(width=4))
    with pytest.raises(ValueError, match=r"noise must be \[B, 7, 2, 8\]"):
        g(torch.zeros(1, 7, 4, 8))
    with pytest.raises(ValueError, match=r"rolls must be \[B, 1, 64, 256\]"):
        d(torch.zeros(1, 2, 64, 256))
    with pytest.raises(ValueError, match="power of two"):
        Generator(RollSpec(pitches=48), 4)


def test_loss_values():
    zero = torch.zeros(4)
    assert discriminator_loss("bce", zero, zero).item() == pytest.approx(2 * math.log(2))
    assert generator_loss("bce", zero).item() == pytest.approx(math.log(2))
    # one-sided smoothing moves the real target only
    assert d_real_term("bce", zero, 0.1).item() == pytest.approx(math.log(2))
    big = torch.full((4,), 20.0)
    assert d_real_term("bce", big, 0.1).item() == pytest.approx(0.1 * 20, rel=1e-3)
    assert d_fake_term("bce", -big).item() < 1e-6
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert discriminator_loss("wgan-gp", real, fake).item() == pytest.approx(-1.5 - 1.25)
    assert generator_loss("hinge", fake).item() == pytest.approx(1.5)


def test_gradient_penalty_of_a_linear_critic():
    w = torch.zeros(1, 1, 2, 2)
    w[..., 0, 0] = 3.0  # |grad| = 3 everywhere: penalty (3 - 1)^2 = 4

    def critic(x):
        return (x * w).sum(dim=(1, 2, 3))
    x = torch.rand(5, 1, 2, 2)
    assert gradient_penalty(critic, x, torch.rand(5, 1, 2, 2)).item() == pytest.approx(4.0)


def test_r1_penalty_of_known_critics():
    w = torch.zeros(1, 1, 2, 2)
    w[..., 0, 0], w[..., 1, 1] = 3.0, 4.0  # a linear critic: grad = w, |grad|^2 = 25 at every roll
    assert r1_penalty(lambda x: (x * w).sum(dim=(1, 2, 3)), torch.rand(5, 1, 2, 2)).item() == pytest.approx(25.0)
    # a quadratic one, D(x) = sum x^2: grad = 2x, so the penalty is the mean of 4 |x|^2 over the rolls
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    x[1] = 0.0
    assert r1_penalty(lambda v: v.pow(2).sum(dim=(1, 2, 3)), x).item() == pytest.approx(2.0)  # (4 + 0) / 2


def test_r1_enters_d_gradient_on_its_steps_only_scaled_by_its_spacing():
    import copy

    from apollogan.config import TrainConfig
    from apollogan.models import Discriminator
    from apollogan.models.common import StepContext
    from apollogan.models.gan import gan_step

    spec = RollSpec()
    torch.manual_seed(0)
    G, D = Generator(spec, 4), Discriminator(spec, 4, head="fc1", norm="none")
    real = (torch.rand(3, 1, 64, 256) < 0.1).float()

    def d_grads(r1, every, step):  # D's gradients when the D step ends, from the same noise each time
        g, d = copy.deepcopy(G), copy.deepcopy(D)
        opts = {"G": torch.optim.SGD(g.parameters(), lr=0.0), "D": torch.optim.SGD(d.parameters(), lr=0.0)}
        seen = []
        opts["D"].step = lambda *a, **k: seen.append([q.grad.clone() for q in d.parameters()])
        ctx = StepContext(nets={"G": g, "D": d}, optimizers=opts, real_batch=lambda: real,
                          generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), step=step)
        gan_step(ctx, g, d, TrainConfig(r1=r1, r1_every=every))
        return seen[0]

    base, applied, skipped = d_grads(0.0, 1, 0), d_grads(2.0, 2, 0), d_grads(2.0, 2, 1)
    params = list(D.parameters())
    penalty = torch.autograd.grad(r1_penalty(D, real), params, allow_unused=True)  # the last bias: no part in it
    penalty = [torch.zeros_like(q) if p is None else p for q, p in zip(params, penalty)]
    assert any(p.abs().sum() > 0 for p in penalty)
    for b, a, s, p in zip(base, applied, skipped, penalty):
        assert torch.allclose(a, b + 2.0 * p, atol=1e-5)  # gamma / 2 * r1_every = 2
        assert torch.allclose(s, b, atol=1e-7)  # step 1 of every 2: no penalty


def test_feature_matching_is_zero_for_equal_means():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert feature_matching(a, a.flip(0)).item() == 0
    assert feature_matching(a, a + 1).item() == pytest.approx(1.0)


def test_config_overrides_types_and_errors(tmp_path):
    cfg = load_config("configs/quick.yaml", ["train.steps=7", "train.lr_g=1e-3", "run.name=007", "train.compile=true"])
    assert cfg.train.steps == 7 and cfg.train.lr_g == 1e-3 and cfg.run.name == "007" and cfg.train.compile is True
    assert cfg.model.width == 24 and cfg.model.g_upsample == "nearest"  # from the preset
    for bad, msg in [("train.stepz=1", "train.stepz: unknown key"), ("nope.x=1", "nope.x: unknown key"),
                     ("train.steps=1.5", "train.steps: expected int"), ("train.steps=abc", "expected int"),
                     ("train.amp=fp8", "not one of"), ("train.steps", "KEY=VALUE"),
                     ("train.steps=0", "must be at least 1"), ("model.g_hold=3", "must be 1, 2 or 4"),
                     ("train.r1=-1", "train.r1: must be >= 0"), ("train.r1_every=0", "must be at least 1"),
                     ("train.r1_every=4", "set train.r1"), ("model.binary_grad=identity", "set model.binary")]:
        with pytest.raises(UserError, match=msg):
            load_config(None, [bad])
    with pytest.raises(UserError, match="d_norm=spectral"):
        load_config(None, ["train.loss=wgan-gp"])
    assert load_config(None, ["model.g_hold=4"]).model.g_hold == 4
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  batch_sise: 3\n")
    with pytest.raises(UserError, match="train.batch_sise: unknown key"):
        load_config(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)


def test_diff_augment_shifts_silences_and_passes_gradients():
    from apollogan.models.gan import _shift, diff_augment

    x = torch.zeros(2, 1, 8, 16, requires_grad=True)
    with torch.no_grad():
        x[:, 0, 3, 5] = 1
    y = _shift(x, torch.tensor([3, -10]), dim=3)  # roll 0 three steps later; roll 1's note leaves the window
    assert y[0, 0, 3].nonzero().flatten().tolist() == [8] and y[1].sum().item() == 0
    y.sum().backward()
    assert x.grad[0, 0, 3, 5].item() == 1 and x.grad[1, 0, 3, 5].item() == 0  # a lost cell gets no gradient
    z = _shift(x.detach(), torch.tensor([2, -3]), dim=2)  # up 2 semitones, down 3
    assert z[0, 0, :, 5].nonzero().flatten().tolist() == [5] and z[1, 0, :, 5].nonzero().flatten().tolist() == [0]

    full = torch.ones(4, 1, 8, 16)
    assert diff_augment(full, (), torch.Generator().manual_seed(0)) is full
    cut = diff_augment(full, ("cutout",), torch.Generator().manual_seed(0))
    for roll in cut:  # a quarter of the steps (4 of 16), consecutive, silent at every pitch
        silent = (roll.sum(dim=(0, 1)) == 0).nonzero().flatten()
        assert len(silent) == 4 and (silent.diff() == 1).all() and roll.sum() == 8 * 12
    moved = diff_augment(full, ("time",), torch.Generator().manual_seed(1))
    empty_steps = [(r.sum(dim=(0, 1)) == 0).sum().item() for r in moved]  # shifts of at most 16 / 8 = 2 steps
    assert max(empty_steps) <= 2 and any(empty_steps)
    again = diff_augment(full, ("time",), torch.Generator().manual_seed(1))
    assert torch.equal(moved, again)  # the generator decides
    with pytest.raises(UserError, match="train.diffaug: 'colour' is not one of time, pitch, cutout"):
        load_config(None, ["train.diffaug=time,colour"])


def test_mode_seeking_ratio_pairs_the_halves_and_pushes_samples_apart():
    from apollogan.models.gan import mode_seeking_ratio

    # samples 0 and 2 are the same roll, 1 and 3 differ in every cell: halves pair (0, 2) and (1, 3),
    # so half the pairs' cells differ; pairing neighbours (0, 1), (2, 3) would give 1.0
    fake = torch.tensor([[1., 0, 1, 0], [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], requires_grad=True)
    z = torch.tensor([[0., 0], [0, 0], [2, 2], [1, 1]])  # |z0 - z2| = 2, |z1 - z3| = 1: mean 1.5
    ratio = mode_seeking_ratio(fake, z)
    assert ratio.item() == pytest.approx(0.5 / 1.5)
    (1 / ratio).backward()  # the generator's term: lowering it moves sample 1 away from sample 3
    assert (fake.grad[1] < 0).all() and (fake.grad[3] > 0).all()
    odd = mode_seeking_ratio(torch.tensor([[0.], [0], [1], [1], [9]]), torch.tensor([[0.], [0], [2], [2], [0]]))
    assert odd.item() == 0.5  # pairs (0, 2) and (1, 3); the fifth sample is left out
    for bad, msg in (("train.mode_seeking=-1", "train.mode_seeking: must be a finite number >= 0"),
                     ("train.mode_seeking=nan", "train.mode_seeking: expected a finite number"),
                     ("train.mode_seeking=inf", "train.mode_seeking: expected a finite number")):
        with pytest.raises(UserError, match=msg):
            load_config(None, [bad])
    with pytest.raises(UserError, match="train.mode_seeking: compares pairs"):
        load_config(None, ["train.mode_seeking=1", "train.batch_size=1"])
    with pytest.raises(UserError, match="train.mode_seeking: a GAN option"):
        load_config(None, ["model.family=lstm", "train.mode_seeking=1"])


def test_generator_returns_the_probabilities_beside_its_binary_roll():
    torch.manual_seed(0)
    g = Generator(RollSpec(), 4, binary="deterministic").train()
    z = g.noise(3)
    out, p = g(z, probs=True)
    assert torch.equal(out, (p >= 0.5).float()) and torch.equal(out, g(z))
    assert ((p > 0) & (p < 1)).all() and not torch.equal(p, out)  # the sigmoid's values, not 0/1
    pe, pe2 = g.eval()(z, probs=True)
    assert torch.equal(pe, pe2) and not torch.equal(pe, (pe >= 0.5).float())  # no binary neurons in eval mode
    for extra, msg in ((["train.mode_seeking=1"], "differs from rolls only with binary neurons"),
                       (["model.binary=deterministic"], "differs from rolls only with binary neurons"),
                       (["model.family=lstm_gan", "train.mode_seeking=1"], "differs from rolls only"),
                       (["model.family=lstm", "train.mode_seeking=0"], "train.mode_seeking_on: a GAN option")):
        with pytest.raises(UserError, match=msg):
            load_config(None, ["train.mode_seeking_on=probabilities", *extra])
    assert load_config(None, ["train.mode_seeking_on=probabilities", "train.mode_seeking=1",
                              "model.binary=stochastic"]).train.mode_seeking_on == "probabilities"


def test_key_bias_moves_every_row_of_its_pitch_class_and_no_other():
    torch.manual_seed(0)
    spec = RollSpec()  # row p is MIDI pitch 30 + p: C# (pitch class 1) is rows 7, 19, 31, 43, 55
    g, _ = build_models(spec, DCGANConfig(width=4, g_upsample="nearest", g_hold=2, g_key=True, binary="deterministic"))
    plain = Generator(spec, 4, binary="deterministic", upsample="nearest", hold=2)
    plain.load_state_dict({k: v for k, v in g.state_dict().items() if not k.startswith("key.")})
    z = g.noise(3)
    assert g.key.weight.abs().sum() == 0  # zero at the start: the same logits as G without it
    assert torch.equal(g(z, logits=True), plain(z, logits=True))
    with torch.no_grad():
        g.key.bias[1] = 4.0
        g.key.weight[11, 0] = 1.0  # pitch class B (rows 5, 17, ...) by the first noise value of each sample
    diff = g(z, logits=True) - plain(z, logits=True)
    rows = torch.zeros(64, dtype=torch.bool)
    rows[[7, 19, 31, 43, 55]] = True
    assert torch.allclose(diff[:, :, rows], torch.full_like(diff[:, :, rows], 4.0))
    b_rows = torch.arange(64) % 12 == 5
    expected = z.flatten(1)[:, 0].view(3, 1, 1, 1).expand_as(diff[:, :, b_rows])
    assert torch.allclose(diff[:, :, b_rows], expected, atol=1e-6)  # per sample, the same at every step
    assert diff[:, :, ~(rows | b_rows)].abs().max() == 0
    out = g.train()(z)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    out.sum().backward()
    assert g.key.weight.grad[11].abs().sum() > 0  # trained through the binary neurons like the rest
    assert "key.weight" in g.state_dict() and "key.weight" not in plain.state_dict()
    assert load_config(None, ["model.g_key=true"]).model.g_key is True


def _roll_of(pitch_classes, spec, steps=64):
    """[1, 1, P, T] with one row of each pitch class sounding for ``steps`` steps (row p is pitch 30 + p)."""
    x = torch.zeros(1, 1, spec.pitches, spec.steps)
    for q in pitch_classes:
        x[0, 0, [p for p in range(spec.pitches) if (spec.low + p) % 12 == q][1], :steps] = 1
    return x


def test_penalties_take_their_gradients_on_the_roll_channels_only():
    torch.manual_seed(0)
    d = Discriminator(RollSpec(), 4, norm="none", in_channels=2)
    real = (torch.rand(3, 1, 64, 256) < 0.1).float()
    x = torch.cat([real, torch.ones_like(real)], 1)  # a roll and a condition channel after it
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(leaf).sum(), leaf)
    roll_only, both = grad[:, :1].flatten(1).pow(2).sum(1).mean(), grad.flatten(1).pow(2).sum(1).mean()
    assert torch.allclose(r1_penalty(d, x, channels=1), roll_only) and torch.allclose(r1_penalty(d, x), both)
    assert both > roll_only * 1.01  # the condition's gradient is left out, not zero
    fake = torch.cat([torch.rand(3, 1, 64, 256), torch.ones_like(real)], 1)
    gp1 = gradient_penalty(d, x, fake, torch.Generator().manual_seed(1), channels=1)
    gp2 = gradient_penalty(d, x, fake, torch.Generator().manual_seed(1))
    assert gp1 > 0 and gp2 > 0 and not torch.allclose(gp1, gp2)


def test_a_rolls_key_is_the_scale_holding_most_of_its_cells():
    from apollogan.models.dcgan import KeyScales
    spec = RollSpec()
    keys = KeyScales(spec)
    d_major = _roll_of((2, 4, 6, 7, 9, 11, 1), spec)
    e_minor = _roll_of((4, 6, 7, 9, 11, 0, 2), spec)  # G major's scale: key 7
    f_major = _roll_of((5, 7, 9, 10, 0, 2, 4), spec)
    # C major with an F# (row 24, pitch 54) of 40 steps: G major's scale holds 64 cells fewer (no F)
    # and 40 more; with an F# of 100 steps it holds more
    c_short_f_sharp, c_long_f_sharp = _roll_of((0, 2, 4, 5, 7, 9, 11), spec), _roll_of((0, 2, 4, 5, 7, 9, 11), spec)
    c_short_f_sharp[0, 0, 24, 100:140] = 1
    c_long_f_sharp[0, 0, 24, 100:200] = 1
    x = torch.cat([d_major, e_minor, f_major, c_short_f_sharp, c_long_f_sharp, torch.zeros_like(d_major)])
    assert keys.of(x).tolist() == [2, 7, 5, 0, 7, 0]  # an empty roll is in C
    plane = keys.plane(torch.tensor([2, 5]), spec.steps)
    assert plane.shape == (2, 1, 64, 256) and torch.equal(plane[..., 0], plane[..., -1])
    f_sharp, f = torch.arange(64)[(30 + torch.arange(64)) % 12 == 6], torch.arange(64)[(30 + torch.arange(64)) % 12 == 5]
    assert (plane[0, 0, f_sharp] == 1).all() and (plane[0, 0, f] == 0).all()  # D major has F#, not F
    assert (plane[1, 0, f_sharp] == 0).all() and (plane[1, 0, f] == 1).all()  # F major the other way
    assert plane[0, 0, :, 0].sum() == sum(1 for p in range(64) if (30 + p) % 12 in (2, 4, 6, 7, 9, 11, 1))
    assert keys.of_plane(torch.cat([torch.zeros(12, 1, 64, 256), keys.plane(torch.arange(12), 256)], 1)).tolist() \
        == list(range(12))
    onset = RollSpec(onset=True)  # channels sustain, onset: only the sustain channel counts
    y = torch.zeros(1, 2, 64, 256)
    y[:, 0] = f_major[:, 0]
    y[:, 1] = d_major[:, 0] * 5
    assert KeyScales(onset).of(y).tolist() == [5]


def test_key_conditioned_gan_gives_g_the_real_windows_keys_and_d_their_scales():
    from apollogan.config import Config
    from apollogan.models.dcgan import DCGAN
    torch.manual_seed(0)
    spec = RollSpec()
    cfg = Config()
    cfg.model = DCGANConfig(width=4, g_upsample="nearest", g_hold=2, binary="deterministic", key_cond=True)
    fam = DCGAN(spec, cfg)
    G, D = fam.modules["G"], fam.modules["D"]
    assert D.in_shape == (2, 64, 256) and G.key_cond_bias.weight.abs().sum() == 0
    real = torch.cat([_roll_of((2, 4, 6, 7, 9, 11, 1), spec), _roll_of((5, 7, 9, 10, 0, 2, 4), spec),
                      _roll_of((5, 7, 9, 10, 0, 2, 4), spec)])
    seen = fam.real_for_d(real)
    assert torch.equal(seen[:, :1], real) and torch.equal(seen[:, 1:], G.keys.plane(torch.tensor([2, 5, 5]), 256))
    assert G.key_counts.tolist() == [1, 1, 2, 1, 1, 3, 1, 1, 1, 1, 1, 1]  # one of each to start, then the keys seen
    z = G.noise(3)
    fake, varied = fam.make_fake(G, seen, z)
    assert torch.equal(fake[:, 1:], seen[:, 1:]) and torch.equal(fake[:, :1], varied)  # the real windows' keys
    assert torch.equal(varied, G(z, key=torch.tensor([2, 5, 5])))
    assert not torch.equal(varied, G(z, key=torch.zeros(3, dtype=torch.long)))
    assert D(fake).shape == (3,)
    # the key's pitch-class bias: key 5 (F major) raised on B flat moves those rows for that key only
    with torch.no_grad():
        G.key_cond_bias.weight[5, 10] = 3.0
    zero, five = G(z[:1], logits=True, key=torch.tensor([0])), G(z[:1], logits=True, key=torch.tensor([5]))
    base = G.key_cond_bias.weight[5].clone()
    with torch.no_grad():
        G.key_cond_bias.weight[5] = 0.0
    five0 = G(z[:1], logits=True, key=torch.tensor([5]))
    b_flat = (30 + torch.arange(64)) % 12 == 10
    assert torch.allclose((five - five0)[:, :, b_flat], torch.tensor(3.0)) and (five - five0)[:, :, ~b_flat].abs().max() == 0
    assert base[10] == 3.0 and not torch.equal(zero, five0)  # the key also enters beside the noise
    # samples draw keys from the counts: all in key 7 when only 7 was seen
    G.key_counts.zero_()
    G.key_counts[7] = 10
    assert G.sample_keys(50, torch.Generator().manual_seed(0)).tolist() == [7] * 50
    g1 = torch.Generator().manual_seed(1)
    s = fam.sample(4, g1)
    g2 = torch.Generator().manual_seed(1)
    assert torch.equal(s, G(G.noise(4, g2), key=torch.full((4,), 7)))
    assert fam.interpolate(3, torch.Generator().manual_seed(0)).shape == (3, 1, 64, 256)
    # generate --key: one key for every sample, by name; a minor key is its relative major's scale
    from argparse import Namespace

    from apollogan.models.dcgan import key_number
    from apollogan.sampling import sampling_options

    def args(key):
        return Namespace(prime=None, temperature=None, top_p=None, key=key)
    assert sampling_options(fam, args("Bm")) == {"key": 2} and sampling_options(fam, args(None)) == {"key": None}
    assert [key_number(n) for n in ("C", "Am", "F#", "Gb", "Bb", "E minor", "Ebmaj", "c#m")] == [0, 0, 6, 6, 10, 7, 3, 4]
    with pytest.raises(UserError, match="--key: 'H' is not a key"):
        sampling_options(fam, args("H"))
    plain_cfg = Config()
    plain_cfg.model = DCGANConfig(width=4)
    with pytest.raises(UserError, match="--key: this model has no such sampling option .*model.key_cond=true"):
        sampling_options(DCGAN(spec, plain_cfg), args("D"))
    in_d = fam.sample(4, torch.Generator().manual_seed(1), key=2)
    assert torch.equal(in_d, G(G.noise(4, torch.Generator().manual_seed(1)), key=torch.full((4,), 2)))
    with pytest.raises(ValueError, match="needs keys"):
        G(z)
    with pytest.raises(ValueError, match="takes no keys"):
        Generator(spec, 4)(z, key=torch.zeros(3, dtype=torch.long))
    assert "key_counts" in G.state_dict()
    assert load_config(None, ["model.key_cond=true"]).model.key_cond is True
    with pytest.raises(UserError, match="model.key_cond"):
        load_config(None, ["model.family=lstm", "model.key_cond=true"])


def test_d_scale_shows_d_the_scale_of_each_rolls_own_key():
    from apollogan.models.dcgan import KeyScales
    torch.manual_seed(0)
    spec = RollSpec()
    _, d = build_models(spec, DCGANConfig(width=4, d_norm="none", d_scale=True, d_mbstd=2))
    _, plain = build_models(spec, DCGANConfig(width=4, d_norm="none"))
    d = d.to(memory_format=torch.channels_last)  # as training with train.channels_last has it
    assert d.features[0].in_channels == 2 and plain.features[0].in_channels == 1 and d.in_shape == (1, 64, 256)
    seen = []
    d.features[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    x = torch.cat([_roll_of((2, 4, 6, 7, 9, 11, 1), spec), _roll_of((5, 7, 9, 10, 0, 2, 4), spec)])
    assert d(x.contiguous(memory_format=torch.channels_last)).shape == (2,)
    keys = KeyScales(spec)
    assert torch.equal(seen[0][:, :1], x) and torch.equal(seen[0][:, 1:], keys.plane(torch.tensor([2, 5]), 256))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    # keys from exact counts: C major's scale holds 1,009 cells and G major's 1,010, one number in bf16
    close = torch.zeros(1, 1, 64, 256)
    close[0, 0, [p for p in range(64) if (30 + p) % 12 in (0, 2, 4, 7, 9, 11)][:10], :100] = 1  # tones of both
    close[0, 0, 11, :9] = 1  # F (row 11), in C major only
    close[0, 0, 0, :10] = 1  # F# (row 0), in G major only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert keys.of(close).tolist() == [7]
        close[0, 0, 11, :11] = 1  # now F outlasts F#
        assert keys.of(close).tolist() == [0]
    x.requires_grad_(True)
    d(x).sum().backward()  # the plane is a constant of the roll: gradients reach the roll through the conv
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="rolls must be"):
        d(torch.zeros(1, 2, 64, 256))
    assert load_config(None, ["model.d_scale=true"]).model.d_scale is True


@pytest.mark.parametrize("upsample", ["transposed", "nearest"])
def test_g_density_starts_g_at_that_note_density_instead_of_half_the_cells(upsample):
    torch.manual_seed(0)
    spec = RollSpec()
    for density, low, high in ((0.0, 0.45, 0.55), (0.064, 0.05, 0.08)):
        g, _ = build_models(spec, DCGANConfig(width=8, g_upsample=upsample, binary="deterministic", g_density=density))
        with torch.no_grad():
            p = g.eval()(g.noise(8))
            on = g.train()(g.noise(8))  # binary neurons: the cells G starts with on
        assert low < p.mean() < high, (density, p.mean())
        assert (0.3 < on.mean() < 0.7) if density == 0 else on.mean() < 0.01
    for bad in ("-0.1", "1", "nan"):
        with pytest.raises(UserError, match="model.g_density"):
            load_config(None, [f"model.g_density={bad}"])
