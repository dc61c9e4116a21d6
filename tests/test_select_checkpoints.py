"""scripts/select_checkpoints.py: --curve (every kept checkpoint's cached scores, as a table per step) and
--choose-on train (choices made on the training windows)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "select_checkpoints.py"


@pytest.fixture
def select():
    spec = importlib.util.spec_from_file_location("select_checkpoints", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _kept(ckpt_dir: Path, step: int, overall: float, pair: float, real_pair: float = 0.2) -> None:
    """A kept checkpoint whose 1,000-sample scores are already cached beside it (so nothing is evaluated)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / f"step-{step:07d}.pt").write_bytes(b"")
    (ckpt_dir / f"step-{step:07d}.eval-1000.json").write_text(json.dumps({
        "overall": overall, "diversity": {"generated_pair_iou": pair, "real_pair_iou": real_pair},
        "metrics": {"note_density": {"generated_mean": 0.05}}}))


def test_curve_prints_each_run_per_step_and_the_mean_with_the_alike_runs_counted(select, tmp_path, capsys):
    runs, ckpts = tmp_path / "runs", tmp_path / "checkpoints"
    for run in ("preset-s0", "preset-s1", "preset-s10", "other-s0", "empty-s0"):
        (runs / "ablations" / "long" / run).mkdir(parents=True)
    _kept(ckpts / "ablations" / "long" / "preset-s0", 250, 3.0, 0.9)  # too alike: 0.9 > 3 x 0.2
    _kept(ckpts / "ablations" / "long" / "preset-s0", 500, 1.0, 0.1)
    _kept(ckpts / "ablations" / "long" / "preset-s1", 250, 5.0, 0.1)
    _kept(ckpts / "ablations" / "long" / "preset-s1", 500, 2.0, 0.7)  # too alike
    _kept(ckpts / "ablations" / "long" / "preset-s10", 250, 1.0, 0.5)  # no step 500: shown as "-"
    _kept(ckpts / "ablations" / "long" / "other-s0", 500, 4.0, 0.1)  # another cell: its own mean row
    assert select.main(["long", "--curve", "--runs", str(runs), "--checkpoints", str(ckpts)]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert "empty-s0: no kept checkpoint" in out.err
    assert lines[0] == "| run | step 250 | step 500 |"
    # runs in seed order (s10 after s1), each run's figure and pair IoU per step
    assert lines[2:6] == ["| other-s0 | - | 4.00 (0.10) |", "| preset-s0 | 3.00 (0.90) | 1.00 (0.10) |",
                          "| preset-s1 | 5.00 (0.10) | 2.00 (0.70) |", "| preset-s10 | 1.00 (0.50) | - |"]
    # per cell: preset's step 250 is (3 + 5 + 1) / 3 with one run alike, step 500 (1 + 2) / 2 with one
    assert lines[6:] == ["| mean of other (runs with pair IoU above the limit) | - | 4.00 (0 of 1 above 3x) |",
                         "| mean of preset (runs with pair IoU above the limit) | 3.00 (1 of 3 above 3x) "
                         "| 1.50 (1 of 2 above 3x) |"]


def test_choosing_on_the_training_windows_uses_their_figures_and_the_validation_pair_iou_limit(select, tmp_path, capsys):
    runs, ckpts = tmp_path / "runs", tmp_path / "checkpoints"
    (runs / "ablations" / "r" / "preset-s0").mkdir(parents=True)
    folder = ckpts / "ablations" / "r" / "preset-s0"
    # the validation figures (1,000 samples) would choose step 750; the training windows' choose step 250
    for step, val, train in ((250, 4.0, 1.0), (500, 1.5, 2.0), (750, 0.5, 3.0)):
        pair = 0.5 if step == 250 else 0.1
        _kept(folder, step, val, pair)  # real pair IoU of the validation windows: 0.2, limit 0.6
        # the training windows' own pair IoU (0.1) would put step 250 over the limit (0.5 > 0.3)
        (folder / f"step-{step:07d}.eval-train-256-s1.json").write_text(json.dumps({
            "overall": train, "diversity": {"generated_pair_iou": pair, "real_pair_iou": 0.1},
            "metrics": {"note_density": {"generated_mean": 0.05}}}))
    assert select.main(["r", "--choose-on", "train", "--runs", str(runs), "--checkpoints", str(ckpts)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | checkpoints: step overall (pair IoU), 256 samples vs training windows | last | best.pt | rule |"
    assert lines[2] == ("| preset-s0 | 250 1.00 (0.50), 500 2.00 (0.10), 750 3.00 (0.10) | 750: 0.50 (0.10) "
                        "| 250: 4.00 (0.50) | 250: 4.00 (0.50) |")
