"""Faults that must not lose a user's work: where a resumed run writes, run names, runs at once."""
import hashlib
import re
import shutil
from pathlib import Path

import pytest
import torch

from apollogan.checkpoint import load_checkpoint
from apollogan.cli import UserError
from apollogan.config import load_config
from apollogan.train import claim_numbered, main, run_lock, train

QUIET = dict(log=lambda *a, **k: None, progress=False)


def tiny(tmp_path, chunks, *extra):
    return load_config(None, [f"data.root={chunks}", "model.width=4", "model.fc_dim=16", "train.batch_size=4",
                              "train.steps=6", "run.log_every=2", "run.sample_every=6", "run.checkpoint_every=3",
                              "run.keep=5", "run.num_samples=4", "run.audio_samples=1", f"run.runs_dir={tmp_path}/runs",
                              f"run.checkpoints_dir={tmp_path}/checkpoints", "run.name=a", *extra])


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_resume_from_a_copied_checkpoint_writes_into_the_folder_it_was_resumed_from(tmp_path, chunks):
    a = train(tiny(tmp_path, chunks), **QUIET)
    run = Path(a["checkpoint"]).parent
    before = digests(run)
    backup = tmp_path / "checkpoints" / "backup"
    backup.mkdir()
    shutil.copy(run / "step-0000003.pt", backup / "step-0000003.pt")
    b = train(tiny(tmp_path, chunks), resume=backup / "step-0000003.pt", **QUIET)
    assert b["run_name"] == "backup" and load_checkpoint(backup / "last.pt")["step"] == 6
    assert digests(run) == before  # a-001 untouched: its steps, last.pt and best.pt as they were


def test_a_stored_run_name_or_folder_is_never_a_place_to_write(tmp_path, chunks, monkeypatch):
    train(tiny(tmp_path, chunks, "train.steps=3"), **QUIET)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "a-001" / "last.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "best.pt").write_text("the user's")
    ckpt["run_name"] = "../../elsewhere"
    ckpt["config"]["run"]["checkpoints_dir"] = str(tmp_path / "evil")
    ckpt["config"]["run"]["runs_dir"] = str(tmp_path / "evil-runs")
    ckpt["config"]["train"]["steps"] = 6
    from apollogan.checkpoint import digest

    ckpt["digest"] = digest({k: v for k, v in ckpt.items() if k != "digest"})  # a crafted file can be consistent
    crafted = tmp_path / "work" / "checkpoints" / "x" / "crafted.pt"
    crafted.parent.mkdir(parents=True)
    torch.save(ckpt, crafted)
    monkeypatch.chdir(tmp_path / "work")  # the default folders, checkpoints/ and runs/, are the work folder's
    assert main(["--resume", str(crafted)]) == 0
    assert load_checkpoint(crafted.parent / "last.pt")["step"] == 6 and (tmp_path / "work" / "runs" / "x").is_dir()
    assert (elsewhere / "best.pt").read_text() == "the user's" and sorted(p.name for p in elsewhere.iterdir()) == ["best.pt"]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "evil-runs").exists()


def test_a_run_name_is_one_plain_folder_name(tmp_path, chunks):
    for bad in ("..", ".", "a/b", "..\\\\x"):
        with pytest.raises(UserError, match="must be one plain folder name"):
            load_config(None, [f"run.name={bad}", "run.numbered=false"])


def test_a_second_run_into_the_same_folder_at_once_is_refused(tmp_path, chunks):
    cfg = tiny(tmp_path, chunks, "run.numbered=false", "run.name=fixed")
    with run_lock(tmp_path / "checkpoints" / "fixed"):  # another process writing it now
        with pytest.raises(UserError, match=r"fixed: another process is writing this run now"):
            train(cfg, **QUIET)
    assert not (tmp_path / "checkpoints" / "fixed" / "last.pt").exists()
    out = train(cfg, **QUIET)  # free again: it runs, and leaves no lock file behind
    assert sorted(p.name for p in Path(out["checkpoint"]).parent.iterdir()) == ["last.pt", "step-0000003.pt",
                                                                                "step-0000006.pt"]
    numbered = tiny(tmp_path, chunks)
    assert [claim_numbered(numbered) for _ in range(2)] == ["a-001", "a-002"]  # each start claims its own


def build(files, out):
    from apollogan.data import WindowOptions, preprocess
    from apollogan.spec import RollSpec

    return preprocess(files, out, RollSpec(), WindowOptions(hop=128, val_fraction=0.3), progress=False)


def test_preprocess_refuses_a_folder_that_is_not_a_shard_set_and_changes_nothing(tmp_path):
    from conftest import NOTTINGHAM

    from apollogan.cli import find_midi_files

    files = find_midi_files([NOTTINGHAM])[:6]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"mine": 1}')
    (mine / "train-backup.bin").write_text("keep")
    with pytest.raises(UserError, match=r"mine: its manifest.json is not an apollogan shard set's"):
        build(files, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.json", "train-backup.bin"]
    assert (mine / "manifest.json").read_text() == '{"mine": 1}' and (mine / "train-backup.bin").read_text() == "keep"
    (mine / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"mine: not empty and not a shard set"):
        build(files, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["train-backup.bin"]


def test_an_all_bad_rerun_leaves_the_good_set_as_it_was(tmp_path):
    from conftest import NOTTINGHAM

    from apollogan.cli import find_midi_files
    from apollogan.shards import ShardSet

    good = tmp_path / "good"
    build(find_midi_files([NOTTINGHAM])[:6], good)
    before = digests(good)
    (tmp_path / "empty.mid").write_bytes(b"")
    m = build([str(tmp_path / "empty.mid")], good)
    assert m["counts"]["converted"] == 0
    assert digests(good) == before and len(ShardSet(good, "train", verify=True)) > 0


def test_a_rebuild_replaces_the_set_and_removes_only_what_its_manifest_listed(tmp_path):
    from conftest import NOTTINGHAM

    from apollogan.cli import find_midi_files
    from apollogan.shards import ShardSet, listed_files

    out = tmp_path / "c"
    first = build(find_midi_files([NOTTINGHAM])[:6], out)
    (out / "notes.txt").write_text("the user's")
    (out / "train-backup.bin").write_text("the user's too")
    (out / ".val-00000.bin.abc.tmp").write_text("left by a killed run")
    second = build(find_midi_files([NOTTINGHAM])[6:12], out)
    names = {p.name for p in out.iterdir()}
    assert {"notes.txt", "train-backup.bin"} <= names and ".val-00000.bin.abc.tmp" not in names
    assert not listed_files(first) & names  # the old set's files went, once the new one was complete
    assert listed_files(second) <= names and second["generation"] == 1
    assert len(ShardSet(out, "train", verify=True)) == second["counts"]["windows"]["train"]


def start(module, *args, cwd=None):
    """A command in a session of its own, as a terminal starts it: a signal to its group reaches every worker."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def test_ctrl_c_in_a_multi_worker_preprocess_stops_in_one_line_and_leaves_nothing(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "out"
    p = start("apollogan.preprocess", "--out", out, "--workers", "2", "--quiet", "--transpose", "12",
              "--time-shifts", *range(1, 9))
    deadline = time.time() + 60
    while not (out.is_dir() and any(out.iterdir())) and time.time() < deadline and p.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the parent and both workers get it
    t0 = time.time()
    _, err = p.communicate(timeout=60)
    assert time.time() - t0 < 20
    if p.returncode == 0:
        pytest.skip("the run finished before the interrupt came")
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "interrupted" and len(err.strip().splitlines()) <= 2, err
    assert sorted(os.listdir(out)) == []  # no shard, no temporary file, no manifest


def test_a_tiny_file_with_an_endless_note_is_skipped_in_bounded_memory_and_time(tmp_path):
    import struct
    import time

    from apollogan.midi import MidiError, read_song
    from apollogan.spec import RollSpec

    # 37 bytes: one note-on at tick 0, its note-off 0x0FFFFFFF ticks later, end of track
    track = b"\x00\x90\x3c\x40" + b"\xff\xff\xff\x7f" + b"\x80\x3c\x00" + b"\x00\xff\x2f\x00"
    data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(track)) + track
    assert len(data) == 37
    path = tmp_path / "long.mid"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(MidiError, match="absurd length: 2796203 beats"):
        read_song(path, RollSpec())
    assert time.perf_counter() - t0 < 5  # it failed before anything per beat was allocated


def test_a_fifo_named_like_midi_is_skipped_not_read_forever(tmp_path):
    import os

    from conftest import NOTTINGHAM

    from apollogan.data import WindowOptions, preprocess
    from apollogan.spec import RollSpec

    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "x.mid")
    shutil.copy(sorted(NOTTINGHAM.glob("*.mid"))[0], folder / "good.mid")
    from apollogan.cli import find_midi_files

    m = preprocess(find_midi_files([folder]), tmp_path / "out", RollSpec(), WindowOptions(val_fraction=0),
                   progress=False, log=lambda *a: None)
    assert m["counts"]["converted"] == 1 and m["counts"]["skipped"] == {"not a regular file (a FIFO, socket or device)": 1}


@pytest.mark.parametrize("args, message", [
    (["--steps", "100000000"], "--steps must be in 1..16384"),
    (["--steps-per-beat", "100000"], "--steps-per-beat in 1..96"),
    (["--seed", "-1", "--transpose", "1"], "--seed, --transpose, --transpose-range and --min-cells must be 0 or more"),
])
def test_absurd_preprocess_sizes_and_seeds_are_refused_before_any_work(tmp_path, args, message):
    from apollogan.preprocess import main as preprocess_main

    with pytest.raises(UserError, match=re.escape(message)):
        preprocess_main(["--out", str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()


def test_checkpoints_carry_a_digest_and_flipped_values_or_nan_weights_are_refused(tmp_path, chunks):
    from apollogan.checkpoint import digest

    out = train(tiny(tmp_path, chunks), **QUIET)
    path = Path(out["checkpoint"])
    ck = torch.load(path, weights_only=True)
    assert ck["digest"] == digest({k: v for k, v in ck.items() if k != "digest"})
    moment = next(iter(ck["optimizers"]["D"]["state"].values()))["exp_avg"]
    moment.view(-1)[:17] += 1.0  # 17 optimiser values changed, the digest not
    torch.save(ck, tmp_path / "flipped.pt")
    with pytest.raises(UserError, match="flipped.pt: checksum mismatch"):
        load_checkpoint(tmp_path / "flipped.pt")
    ck = torch.load(path, weights_only=True)
    name = next(iter(ck["ema"]["G"]))
    ck["ema"]["G"][name].view(-1)[0] = float("nan")
    ck["digest"] = digest({k: v for k, v in ck.items() if k != "digest"})  # a consistent file with NaN weights
    torch.save(ck, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=f"nan.pt: non-finite weights \\(NaN or inf\\) in ema.G.{name}"):
        load_checkpoint(tmp_path / "nan.pt")


def test_a_bad_best_pt_is_passed_over_with_a_warning_on_stderr(tmp_path, chunks, capsys):
    from apollogan.checkpoint import resolve_checkpoint

    out = train(tiny(tmp_path, chunks), **QUIET)
    run = Path(out["checkpoint"]).parent
    (run / "best.pt").write_bytes(b"crafted")
    capsys.readouterr()
    path, _ = resolve_checkpoint(str(run), best=True)
    got = capsys.readouterr()
    assert path == run / "last.pt" and "warning:" in got.err and "warning" not in got.out


def test_a_full_disk_while_saving_is_one_line_naming_the_file_and_leaves_no_temporary(tmp_path, chunks, monkeypatch):
    import errno

    real = torch.save
    calls = {"n": 0}

    def full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 6)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=r"step-0000006.pt: could not write the checkpoint \(No space left on device\)"):
        train(tiny(tmp_path, chunks), **QUIET)
    run = tmp_path / "checkpoints" / "a-001"
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(run / "last.pt")["step"] == 3  # the last whole one stands


def test_a_full_disk_in_preprocess_is_one_line_naming_the_set_and_leaves_it_as_it_was(tmp_path, monkeypatch):
    import errno
    import os

    from conftest import NOTTINGHAM

    from apollogan import shards
    from apollogan.cli import find_midi_files

    files = find_midi_files([NOTTINGHAM])
    out = tmp_path / "out"
    build(files[:6], out)
    before = digests(out)
    real = shards.ShardWriter.add

    def full(self, packed, records):
        if self.windows > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, packed, records)
    monkeypatch.setattr(shards.ShardWriter, "add", full)
    with pytest.raises(UserError, match=f"{out}: could not write the shard set \\(No space left on device\\)"):
        build(files[:12], out)
    assert digests(out) == before and not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_corrupt_validation_shard_is_refused_before_the_first_step(tmp_path, chunks):
    data = tmp_path / "data"
    shutil.copytree(chunks, data)
    shard = data / "val-00000.bin"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    steps = []
    with pytest.raises(UserError, match="val-00000.bin: checksum mismatch"):
        train(tiny(tmp_path, data, "run.metrics_every=3"), log=steps.append, progress=False)
    assert not (tmp_path / "checkpoints" / "a-001" / "last.pt").exists() and not any("step" in s for s in steps)
    from apollogan.sampling import real_windows
    from apollogan.spec import RollSpec

    with pytest.raises(UserError, match="checksum mismatch"):  # generate --prime reads its primers verified too
        real_windows(data, RollSpec(), 4, 0, "--prime 16")


def test_a_read_only_shard_set_keeps_its_caches_in_the_user_cache(tmp_path, chunks, monkeypatch):
    from apollogan import scoring

    data = tmp_path / "data"
    shutil.copytree(chunks, data)
    for p in data.glob("reference-*.npz"):
        p.unlink()
    real = scoring.atomic_write_bytes

    def read_only(path, *a, **k):  # the set's folder cannot be written (a root user ignores chmod, so say it here)
        if Path(path).parent == data:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(scoring, "atomic_write_bytes", read_only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = train(tiny(tmp_path, data, "run.metrics_every=3", "run.metrics_samples=8"), **QUIET)
    assert load_checkpoint(out["checkpoint"])["step"] == 6 and "Metrics/overall" in out
    assert list((tmp_path / "cache" / "apollogan").glob("reference-*.npz"))
    assert not list(data.glob("reference-*.npz"))
