"""Training throughput: samples/s of full G+D training steps, plain fp32 eager versus the fast paths.

    python scripts/bench_train.py                       # quick preset + reference model, current device
    python scripts/bench_train.py --presets quick --steps 20
    python scripts/bench_train.py --batch 128 --no-compile

For each preset it times the same training step (D step on real and fake, G step,
synthetic data so the loader is not measured) with each of bf16 autocast, channels_last
and torch.compile on and off, and reports samples/s and the ratio to plain fp32 eager.
On CUDA it also reports model FLOP/s against the card's bf16 peak (--peak-tflops).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time

import torch
import torch.nn.functional as F

from apollogan.config import load_config
from apollogan.models import build_models
from apollogan.spec import RollSpec


def conv_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds x 2 of the convolutions and linears for one forward pass, counted with hooks."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += 2 * out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, torch.nn.ConvTranspose2d):
            total += 2 * inp[0].numel() * m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
        elif isinstance(m, torch.nn.Linear):
            total += 2 * out.numel() * m.in_features
    hs = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return total


def make_step(g, d, opt_g, opt_d, bf16: bool, device):
    ac = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(real, z1, z2):
        with torch.no_grad(), ac():
            fake = g(z1).float()
        opt_d.zero_grad(set_to_none=True)
        with ac():
            lr = d(real).float()
            lf = d(fake).float()
            loss_d = F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr)) + \
                F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        with ac():
            out = d(g(z2).float()).float()
            loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        loss_g.backward()
        opt_g.step()
        return loss_d.detach(), loss_g.detach()
    return step


def measure(preset, batch, steps, warmup, bf16, channels_last, compiled, device):
    if compiled:
        torch._dynamo.reset()  # fresh caches: otherwise each new model counts as a recompile of the last
    cfg = load_config(f"configs/{preset}.yaml")
    spec = RollSpec()
    torch.manual_seed(0)
    g, d = build_models(spec, cfg.model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g.to(device, memory_format=fmt), d.to(device, memory_format=fmt)
    opt_g = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
    step = make_step(torch.compile(g) if compiled else g, torch.compile(d) if compiled else d,
                     opt_g, opt_d, bf16, device)
    real = (torch.rand(batch, *spec.shape, device=device) < 0.06).float().contiguous(memory_format=fmt)
    z1, z2 = g.noise(batch, device=device), g.noise(batch, device=device)
    losses = []
    for _ in range(warmup):
        losses.append(step(real, z1, z2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        losses.append(step(real, z1, z2))
    sync()
    dt = (time.perf_counter() - t) / steps
    finite = all(torch.isfinite(a).item() and torch.isfinite(b).item() for a, b in losses)
    # one training step = G forward twice, D forward three times, backward of D twice and G+D once (about 2x forward)
    fg = conv_flops(g, z1[:1]) * batch
    fd = conv_flops(d, real[:1]) * batch
    flops = 2 * fg + 3 * fd + 2 * (2 * fd) + 2 * (fg + fd)
    return batch / dt, finite, flops / dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["quick", "apollogan"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 30 on GPU, 10 quick / 2 reference on CPU)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the card (H100 SXM: 989)")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {a.batch}")
    for preset in a.presets:
        steps = a.steps or (30 if device.type == "cuda" else (10 if preset == "quick" else 2))
        warmup = 3 if device.type == "cuda" else 1
        print(f"\n{preset} ({steps} timed steps)\n| bf16 | channels_last | compile | samples/s | vs plain | "
              f"stable | TFLOP/s |\n| --- | --- | --- | --- | --- | --- | --- |")
        base = None
        for compiled, bf16, cl in itertools.product([False] + ([] if a.no_compile else [True]), [False, True],
                                                    [False, True]):
            try:
                sps, ok, fps = measure(preset, a.batch, steps, warmup + (2 if compiled else 0), bf16, cl, compiled,
                                       device)
            except Exception as e:  # a backend without compile support, say: report it and go on
                print(f"| {bf16} | {cl} | {compiled} | failed: {type(e).__name__}: {str(e)[:80]} | | | |")
                continue
            base = base or sps
            peak = f" ({fps / 1e12 / a.peak_tflops:.0%} of peak)" if device.type == "cuda" else ""
            print(f"| {bf16} | {cl} | {compiled} | {sps:.1f} | {sps / base:.2f}x | {'yes' if ok else 'NO'} | "
                  f"{fps / 1e12:.2f}{peak} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
