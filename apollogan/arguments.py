"""Command-line arguments that more than one command reads.

Evaluate's whole parser lives here because the ablation runner checks the evaluate arguments of its
files with it, before any run trains.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import UserError
from .config import meter_of


def meter_arg(text: str) -> tuple[int, int]:
    try:
        return meter_of(text)
    except ValueError:
        raise UserError(f"--meter {text!r}: expected a time signature such as 4/4 or 6/8") from None


def add_device_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default="auto", help="where the model samples: auto (the GPU when there is one, "
                    "default), cpu, cuda, cuda:N; the noise is drawn on the CPU, so a seed gives the same noise on "
                    "every device (the samples can still differ slightly: GPU convolutions may use TF32)")


def add_sampling_args(ap: argparse.ArgumentParser) -> None:
    """The options some families take when sampling (see their ``sample_options``)."""
    g = ap.add_argument_group("sampling options of the lstm family")
    g.add_argument("--prime", type=int, metavar="K",
                   help="start from the first K steps of real validation windows (default 16; 0: from silence)")
    g.add_argument("--temperature", type=float, metavar="T",
                   help="divide the logits by T before drawing (default 1; 0: every cell with p >= 0.5, no draw)")
    g.add_argument("--top-p", type=float, metavar="P",
                   help="per frame, keep the most probable cells holding share P of its probability mass (default 1)")
    k = ap.add_argument_group("sampling option of a dcgan trained with model.key_cond=true")
    k.add_argument("--key", metavar="NAME", help="every sample in this key: a major tonic (C, F#, Bb) or a minor one "
                   "(Em, C#m: its relative major's scale); default: each sample's key drawn as often as the "
                   "training windows' keys")


def evaluate_parser(description: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m apollogan.evaluate", description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH",
                     help="checkpoint file, or a run's folder or name: its best.pt (the step training chose) "
                          "where it has one, else its last checkpoint")
    src.add_argument("--midi", type=Path, metavar="DIR", help="score a folder of MIDI (or pianoroll .npz) files instead")
    ap.add_argument("--num", type=int, default=1000, help="samples from the checkpoint (default %(default)s)")
    ap.add_argument("--data", type=Path, help="shard set to compare with and to prime from (default: the "
                                              "checkpoint's data.root, or chunks/nottingham)")
    ap.add_argument("--out", type=Path, help="JSON file for the full result")
    ap.add_argument("--threshold", type=float, default=0.5, help="binarisation of generated rolls (default %(default)s)")
    ap.add_argument("--bernoulli", action="store_true", help="draw each cell of a generated roll with its "
                                                              "probability instead of thresholding")
    ap.add_argument("--meter", help="time signature of generated rolls; they are compared with the validation "
                                    "windows in it (default: the run.meter the checkpoint trained with, 4/4 unless "
                                    "set; a conditional model's rolls take the meters of their chords' windows)")
    ap.add_argument("--split", choices=("val", "train"), default="val",
                    help="the real windows to compare with: val (default), or train, to choose among a run's "
                         "checkpoints without looking at the validation windows that then score the choice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--likelihood", choices=("val", "test"), metavar="SPLIT",
                    help="instead of sampling: the checkpoint's NLL per frame and frame accuracy on the whole tunes of "
                         "a benchmark shard set's val or test split, the benchmark's way (docs/benchmark.md)")
    ap.add_argument("--raw", action="store_true",
                    help="a checkpoint's raw weights, not their moving average (also for --against)")
    ap.add_argument("--no-memorisation", action="store_true", help="skip the nearest-window search")
    ap.add_argument("--device", default="auto", help="where the checkpoint samples and the nearest-window search "
                    "runs: auto (the GPU when there is one, default), cpu, cuda, cuda:N")
    f = ap.add_argument_group("feature distances (the headline figures: docs/metrics.md)")
    f.add_argument("--features", type=Path, metavar="FILE", help="feature network (default: the one trained beside the "
                   "shards, else the bundled one where the roll spec matches)")
    f.add_argument("--feature-size", type=int, metavar="N", help="generated and real windows per figure (default 200); "
                   "given, too few windows is an error instead of a skipped figure")
    f.add_argument("--no-features", action="store_true", help="skip the feature distances")
    ap.add_argument("--against", metavar="RUN", help="with a conditional checkpoint: also score this (unconditional) "
                                                     "model's melodies over the same chords")
    add_sampling_args(ap)
    return ap
