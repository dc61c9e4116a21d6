"""A feature network for rolls, and distances between sets of rolls in its space (the yardstick).

The network reads a window [C, P, T] as a sequence of segments (one 4/4 bar at the default grid),
encodes each segment's notes, and runs a GRU over them in time order. It is trained on a shard
set's training windows only, with contrastive predictive coding (van den Oord et al. 2018): from
the segments so far, tell each of the next few segments from every other segment of the batch.
That task needs what per-roll statistics miss (which bar follows which, what melody sits on what
chords, how a phrase goes on) and no corrupted music is ever shown to it. A window's feature is
the mean of the GRU's states, standardised by the training windows' features.

Distances between generated and real windows' features: the Fréchet distance (FD, as FID), the
kernel distance (KD: the unbiased MMD^2 with the cubic polynomial kernel, as KID), and precision
and recall (k-nearest-neighbour manifolds, Kynkäänniemi et al. 2019), each at a fixed sample size
with a bootstrap 95% interval. docs/metrics.md has the measurements behind these choices.
"""
from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import __version__
from .cli import REPO_ROOT, UserError
from .spec import RollSpec

FORMAT, VERSION = "apollogan-features", 1
FILE = "features.pt"  # beside the shards it was trained on
BUNDLED = Path(__file__).resolve().parent / "assets" / "features-nottingham.pt"  # for the bundled tunes' spec
SPEC_KEYS = ("low", "pitches", "steps", "steps_per_beat", "onset", "parts")
HOLDOUT = 5  # the training windows of every 5th source file are held out of the network's training: the floor's


def held_out(shards, holdout: int = HOLDOUT) -> np.ndarray:
    """Which windows of a split come from the source files a network of these shards never trained on."""
    return shards.records["source"] % holdout == 0


class RollEncoder(nn.Module):
    """Rolls [B, C, P, T] -> features [B, dim + horizon]; ``segments`` and ``context`` for the training task."""

    def __init__(self, channels: int, pitches: int, steps: int, segment: int = 16, width: int = 128, dim: int = 64,
                 horizon: int = 4):
        super().__init__()
        if steps % segment:
            raise ValueError(f"{steps} steps are not a whole number of {segment}-step segments")
        self.segment, self.horizon = segment, horizon
        self.encode = nn.Sequential(  # pitch rows as channels: each layer sees every pitch at once (harmony)
            nn.Conv1d(channels * pitches, width, 3, padding=1), nn.GELU(),
            nn.Conv1d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv1d(width, dim, segment, stride=segment))  # [B, dim, T / segment]: one code per segment
        self.gru = nn.GRU(dim, dim, batch_first=True)  # in time order: what came before each segment
        self.predict = nn.Linear(dim, dim * horizon)  # the next ``horizon`` codes from each state

    def segments(self, x: torch.Tensor) -> torch.Tensor:
        b, c, p, t = x.shape
        return self.encode(x.reshape(b, c * p, t)).transpose(1, 2)  # [B, S, dim]

    def context(self, z: torch.Tensor) -> torch.Tensor:
        return self.gru(z)[0]  # [B, S, dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean context state, and per horizon k how well the window's own segment k ahead is picked
        out from its other segments (mean log-probability): what the window holds, and how it goes on."""
        z = self.segments(x)
        c = self.context(z)
        b, s, d = z.shape
        pred = self.predict(c).reshape(b, s, self.horizon, d)
        fit = []
        for k in range(1, self.horizon + 1):
            logits = torch.einsum("btd,bsd->bts", pred[:, : s - k, k - 1], z)  # [B, S - k, S]: own segments
            true = torch.arange(k, s, device=x.device)
            fit.append(logits.log_softmax(-1)[:, torch.arange(s - k), true].mean(1))
        return torch.cat([c.mean(dim=1), torch.stack(fit, 1)], dim=1)


def cpc_loss(net: RollEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over the batch: each state's prediction of the segment k ahead (k = 1..horizon) against
    every segment of the batch. Returns (loss, accuracy of picking the true segment)."""
    z = net.segments(x)  # [B, S, D]
    c = net.context(z)
    b, s, d = z.shape
    pred = net.predict(c).reshape(b, s, net.horizon, d)
    keys = z.reshape(b * s, d)
    losses, hits = [], []
    for k in range(1, net.horizon + 1):
        q = pred[:, : s - k, k - 1].reshape(-1, d)  # [B * (S - k), D]
        target = (torch.arange(b)[:, None] * s + torch.arange(k, s)[None, :]).reshape(-1).to(x.device)
        logits = q @ keys.T
        losses.append(nn.functional.cross_entropy(logits, target))
        hits.append((logits.argmax(dim=1) == target).float().mean())
    return torch.stack(losses).mean(), torch.stack(hits).mean()


# --- the network on disk ---------------------------------------------------------------------

def shard_digest(manifest: dict, split: str = "train") -> str:
    """One sha256 over a split's shard checksums and the spec: what a network was trained on."""
    shards = [sh["sha256"] for sh in manifest["shards"][split]]
    return hashlib.sha256(repr((shards, sorted(manifest["spec"].items()))).encode()).hexdigest()


class FeatureNet:
    """A trained encoder with its standardisation and the record of how it was made."""

    def __init__(self, net: RollEncoder, mean: torch.Tensor, std: torch.Tensor, info: dict, path: Path | None = None):
        self.net, self.mean, self.std, self.info, self.path = net.eval(), mean, std, info, path

    @property
    def spec(self) -> dict:
        return self.info["spec"]

    @torch.no_grad()
    def features(self, rolls, batch: int = 256) -> np.ndarray:
        """Standardised features [N, dim] of rolls [N, C, P, T] (bool or float, numpy or torch)."""
        out = []
        for lo in range(0, len(rolls), batch):
            x = torch.as_tensor(np.asarray(rolls[lo: lo + batch]), dtype=torch.float32)
            out.append((self.net(x) - self.mean) / self.std)
        return torch.cat(out).double().numpy() if out else np.zeros((0, len(self.mean)))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        torch.save({"format": FORMAT, "version": VERSION, "state": self.net.state_dict(), "mean": self.mean,
                    "std": self.std, "info": self.info}, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> FeatureNet:
        """Weights-only: a file that needs code to unpickle is refused before it runs."""
        path = Path(path)
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{path}: no such feature network") from None
        except pickle.UnpicklingError:
            raise UserError(f"{path}: not a readable feature network (not a torch file of tensors and plain "
                            f"values: a file that needs code to load is refused)") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            raise UserError(f"{path}: not a readable feature network ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"{path}: not an apollogan feature network")
        if d.get("version") != VERSION:
            raise UserError(f"{path}: feature network format version {d.get('version')}; this apollogan reads {VERSION}")
        try:
            info = d["info"]
            net = RollEncoder(**info["arch"])
            net.load_state_dict(d["state"])
            mean, std = d["mean"].float(), d["std"].float()
            if mean.shape != std.shape or mean.shape[0] != info["arch"]["dim"] + info["arch"]["horizon"]:
                raise ValueError("standardisation of the wrong size")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise UserError(f"{path}: a damaged feature network ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        return cls(net, mean, std, info, path)


def spec_matches(net_spec: dict, spec: RollSpec) -> bool:
    mine = spec.to_dict()
    return all(net_spec.get(k) == mine.get(k) for k in SPEC_KEYS)


def train_command(root) -> str:
    return f"python -m apollogan.embed --data {root}"


def find_network(root, spec: RollSpec, manifest: dict, path=None) -> tuple[FeatureNet, str]:
    """The feature network to score ``root``'s rolls with, and a line saying which it is: ``path`` when
    given, else the one trained beside the shards, else the bundled one where the spec matches.
    UserError (one line naming the command that trains one) where none fits."""
    candidates = [Path(path)] if path else [Path(root) / FILE, BUNDLED]
    for cand in candidates:
        if not cand.is_file():
            if path:
                raise UserError(f"{cand}: no such feature network")
            continue
        fn = FeatureNet.load(cand)
        if not spec_matches(fn.spec, spec):
            if path or cand.parent == Path(root):
                raise UserError(f"{cand}: a feature network for rolls {RollSpec.from_dict(fn.spec).describe()}, not "
                                f"{spec.describe()}; train one with {train_command(root)}")
            continue
        same = fn.info.get("train_digest") == shard_digest(manifest)
        where = _display(cand)
        if same:
            return fn, f"features: {where}, trained on these shards"
        return fn, (f"features: {where}, trained on {fn.info.get('data', 'other shards')} (same spec, other windows); "
                    f"for a network of these shards: {train_command(root)}")
    raise UserError(f"{root}: no feature network for rolls {spec.describe()}; train one with {train_command(root)}")


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def train_network(shards, steps: int = 3000, batch: int = 64, seed: int = 0, lr: float = 1e-3, progress: bool = True,
                  arch: dict | None = None, command: str = "") -> FeatureNet:
    """Train an encoder on the windows of ``shards`` (a training split) outside the held-out source files,
    with the contrastive task; standardise on them."""
    spec = shards.spec
    arch = {"channels": spec.channels, "pitches": spec.pitches, "steps": spec.steps,
            "segment": spec.steps_per_beat * 4, "width": 128, "dim": 64, "horizon": 4, **(arch or {})}
    torch.manual_seed(seed)
    net = RollEncoder(**arch)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    usable = np.flatnonzero(~held_out(shards))  # the rest: real windows the network has not seen (the floor's)
    n = len(usable)
    if n < batch:
        raise UserError(f"{shards.root}: {n} training windows outside the held-out files, fewer than one batch of {batch}")
    bar = tqdm(range(steps), desc="feature network", unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    loss_avg = acc_avg = None
    seen = []
    for step in bar:
        idx = np.sort(rng.choice(n, batch, replace=False))
        x = torch.from_numpy(shards.get(usable[idx])).float()
        loss, acc = cpc_loss(net, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen.append(torch.stack([loss.detach(), acc.detach()]))
        if len(seen) == 20 or step == steps - 1:  # read (one sync) only when shown: the mean of the last steps
            loss_avg, acc_avg = torch.stack(seen).mean(0).tolist()
            seen = []
            bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.3f}", refresh=False)
    bar.close()
    net.eval()
    with torch.no_grad():
        feats = torch.cat([net(torch.from_numpy(shards.get(usable[lo: lo + 256])).float()) for lo in range(0, n, 256)])
    info = {"arch": arch, "spec": spec.to_dict(), "data": str(shards.root), "train_windows": n, "holdout": HOLDOUT,
            "train_digest": shard_digest(shards.manifest),
            "shard_checksums": [sh["sha256"] for sh in shards.manifest["shards"]["train"]],
            "command": command, "seed": seed, "steps": steps, "batch": batch, "lr": lr, "torch": str(torch.__version__),
            "apollogan": __version__, "final_loss": loss_avg, "final_accuracy": acc_avg}
    return FeatureNet(net, feats.mean(0), feats.std(0).clamp(min=1e-6), info)


# --- distances -----------------------------------------------------------------------------

def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_a^(1/2); tr((S_a S_b)^(1/2)) = tr((r S_b r)^(1/2))
    m = root @ sb @ root
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


def kernel_distance(a: np.ndarray, b: np.ndarray, ids_a=None, ids_b=None) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 (KID's estimator); 0 in expectation for one distribution.
    ``ids_a`` / ``ids_b``: which original point each row is (a resample), so that a point is never
    paired with a copy of itself: the estimator stays unbiased under the bootstrap."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]

    def within(x, ids):
        k = (x @ x.T / d + 1) ** 3
        keep = ~np.eye(len(x), dtype=bool) if ids is None else ids[:, None] != ids[None, :]
        return k[keep].mean()
    return float(within(a, ids_a) + within(b, ids_b) - 2 * ((a @ b.T / d + 1) ** 3).mean())


def _knn_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, gen: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: share of generated points inside some real point's k-NN ball; recall: the reverse."""
    real, gen = np.asarray(real, np.float64), np.asarray(gen, np.float64)
    d = np.sqrt(((gen[:, None] - real[None]) ** 2).sum(-1))  # [G, R]
    precision = float((d <= _knn_radius(real, k)[None]).any(axis=1).mean())
    recall = float((d.T <= _knn_radius(gen, k)[None]).any(axis=1).mean())
    return precision, recall


def bootstrap(fn, a: np.ndarray, b: np.ndarray, rounds: int = 200, seed: int = 0, ids: bool = False) -> dict:
    """fn(a, b) on the sets as given, and a 95% interval: the 2.5% / 97.5% quantiles of it over resamplings
    of both sets, less the resampling's bias (``ids``: fn also takes which original point each row is)."""
    if rounds == 0:  # the figure alone (training's scored steps)
        return {"value": fn(a, b), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        draws.append(fn(a[ia], b[ib], ia, ib) if ids else fn(a[ia], b[ib]))
    value = fn(a, b)
    # resampled sets repeat points, which moves a figure like FD (fewer distinct windows look less alike);
    # the interval is shifted by that bias as the draws estimate it (their mean minus the value)
    low, high = np.quantile(np.asarray(draws) - (np.mean(draws) - value), [0.025, 0.975])
    return {"value": value, "low": float(low), "high": float(high)}


def distances(gen: np.ndarray, real: np.ndarray, floor: np.ndarray | None = None, rounds: int = 200,
              seed: int = 0) -> dict:
    """FD, KD (with intervals), precision and recall of generated features against real ones, and the
    same of ``floor`` (other real windows: training against validation) as fd_floor, kd_floor, ..."""
    def one(x, tag=""):
        p, r = precision_recall(real, x)
        return {f"fd{tag}": bootstrap(frechet_distance, x, real, rounds, seed),
                f"kd{tag}": bootstrap(kernel_distance, x, real, rounds, seed + 1, ids=True),
                f"precision{tag}": p, f"recall{tag}": r}
    out = one(gen)
    if floor is not None:
        out.update(one(floor, "_floor"))
    return out
