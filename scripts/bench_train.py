"""Training throughput of every model family: samples/s of its real training step, fp32 versus the fast paths.

    python scripts/bench_train.py                                  # every preset, current device
    python scripts/bench_train.py --presets quick lstm --steps 20
    python scripts/bench_train.py --presets quick apollogan lstm_gan --freeze-compare --no-compile
    python scripts/bench_train.py --presets quick --freeze-compare --no-compile --repeat 5
    python scripts/bench_train.py --presets quick --no-compile --no-bf16 --repeat 3   # a CPU with AVX2 only

For each preset (configs/NAME.yaml) it builds the family and times ``family.train_step`` (the
step the training loop runs: for the GANs d_steps D steps and one G step) on synthetic sparse
rolls, so the loader is not measured, with bf16 autocast, channels_last and torch.compile on
and off. ``--freeze-compare`` also times the GAN step with D's weight gradients computed in
the G step (the behaviour before D was frozen there). ``--repeat R`` measures every variant R
times, alternating with its neighbours, and reports the median. On CUDA it reports the card's name.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

from apollogan.config import load_config
from apollogan.models import StepContext, build_family
from apollogan.spec import RollSpec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FAMILY_PRESETS = ["quick", "lstm", "vae", "ae", "lstm_gan", "cond_gan", "apollogan"]


def measure(preset: str, batch: int, steps: int, warmup: int, bf16: bool, channels_last: bool, compiled: bool,
            device: torch.device, freeze_d: bool = True) -> tuple[float, bool]:
    """(samples/s, losses finite) of ``steps`` training steps of the preset's family."""
    if compiled:
        torch._dynamo.reset()  # fresh caches: otherwise each new model counts as a recompile of the last
    cfg = load_config(CONFIGS / f"{preset}.yaml", [f"train.batch_size={batch}"])
    spec = RollSpec(parts=2, part_mode="tracks") if cfg.model.family == "cond_gan" else RollSpec()  # melody and chords
    torch.manual_seed(0)
    family = build_family(spec, cfg)
    if hasattr(family, "freeze_d"):
        family.freeze_d = freeze_d
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in family.modules.values():
        m.to(device).to(memory_format=fmt).train()
    nets = {k: torch.compile(m) if compiled else m for k, m in family.modules.items()}
    real = (torch.rand(batch, *spec.shape, device=device) < 0.06).float().contiguous(memory_format=fmt)
    gen = torch.Generator(device).manual_seed(0)
    ac = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    ctx = StepContext(nets=nets, optimizers=family.optimizers(), real_batch=lambda: real, generator=gen,
                      device=device, autocast=ac, fmt=fmt)
    losses = []
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        ctx.step = i
        out = family.train_step(ctx)
        losses += [v for k, v in out.items() if k.startswith("Loss/")]
    sync()
    dt = (time.perf_counter() - start) / steps
    return batch / dt, bool(torch.isfinite(torch.stack(losses)).all())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=FAMILY_PRESETS, help="configs/NAME.yaml (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 30 on GPU, 10 on CPU, 2 for apollogan)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")
    ap.add_argument("--no-bf16", action="store_true", help="skip bf16 variants (on a CPU without bf16 units they are "
                                                            "emulated, about 20x slower than fp32, and take most of the run)")
    ap.add_argument("--freeze-compare", action="store_true", help="GANs: also time the G step with D unfrozen")
    ap.add_argument("--repeat", type=int, default=1, help="measurements per variant; the median is reported")
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; batch {a.batch}")
    for preset in a.presets:
        steps = a.steps or (30 if device.type == "cuda" else (2 if preset == "apollogan" else 10))
        warmup = 3 if device.type == "cuda" else 2
        family = load_config(CONFIGS / f"{preset}.yaml").model.family
        print(f"\n{preset} ({family}, {steps} timed steps)\n| bf16 | channels_last | compile | D frozen in G step | "
              f"samples/s | vs plain fp32 | finite |\n| --- | --- | --- | --- | --- | --- | --- |", flush=True)
        base = None
        freeze = [True, False] if a.freeze_compare and family in ("dcgan", "lstm_gan") else [True]
        variants = list(itertools.product([False] + ([] if a.no_compile else [True]), [False] + ([] if a.no_bf16 else [True]),
                                          [False, True], freeze))
        results = {v: [] for v in variants}
        for r in range(a.repeat):  # round robin, so a slow spell of the machine hits every variant alike
            for v in variants if r % 2 == 0 else variants[::-1]:
                compiled, bf16, cl, fr = v
                try:
                    results[v].append(measure(preset, a.batch, steps, warmup + (2 if compiled else 0), bf16, cl,
                                              compiled, device, fr))
                except Exception as e:  # a backend without compile support, say: report it and go on
                    results[v] = f"failed: {type(e).__name__}: {str(e)[:80]}"
        for v in variants:
            compiled, bf16, cl, fr = v
            if isinstance(results[v], str):
                print(f"| {bf16} | {cl} | {compiled} | {fr} | {results[v]} | | |")
                continue
            sps = statistics.median(x for x, _ in results[v])
            ok = all(f for _, f in results[v])
            base = base or sps
            print(f"| {bf16} | {cl} | {compiled} | {fr} | {sps:.1f} | {sps / base:.2f}x | {'yes' if ok else 'NO'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
