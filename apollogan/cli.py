"""What every command shares: one-line errors, atomic writes, finding MIDI files."""
from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import tempfile
from pathlib import Path

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".npz")  # .npz: pypianoroll Multitrack files
REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DATA = REPO_ROOT / "data" / "nottingham" / "full"


class UserError(Exception):
    """A problem the user can fix; reported as one line, never a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what Slurm and most schedulers send before a kill), taken like Ctrl-C; exit status 143."""


@contextlib.contextmanager
def stop_flag(enabled: bool = True):
    """While the block runs, SIGINT (Ctrl-C) and SIGTERM only set the flag it yields ({"signal": number}), so
    that a loop can stop between two steps; a second Ctrl-C interrupts at once. Outside the main thread, or
    not ``enabled``, the signals keep their usual effect."""
    import signal
    import threading

    flag = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: now
        flag["signal"] = signum
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stopped(flag: dict) -> KeyboardInterrupt:
    """The exception a stop flag's signal ends a command with: Terminated for SIGTERM, else KeyboardInterrupt."""
    import signal

    return Terminated() if flag.get("signal") == signal.SIGTERM else KeyboardInterrupt()


def run(main) -> None:
    """Call ``main()`` and turn user errors and Ctrl-C into one line and an exit code."""
    try:
        code = main()
        sys.stdout.flush()  # here, so that a closed pipe is caught below rather than at exit
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # an output path that cannot be written: not a directory, no permission, disk full
        if isinstance(e, BrokenPipeError) and _stdout_reader_gone():
            # the reader of stdout went away (`... --dry-run | head`): not an error to report; stdout goes
            # to /dev/null so that the interpreter's last flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer whose pipe closed
        where = e.filename if e.filename is not None else "I/O"
        print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real stdout: assume so
        return True


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write to a temporary file in the same folder, then rename over ``path`` (after an fsync,
    so the file survives a crash of the machine, unless ``fsync`` is False)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def find_midi_files(inputs) -> list[str]:
    """Files given directly, plus every MIDI (or pianoroll .npz) file below each folder, sorted and without
    repeats. Plain strings, not Paths: a Lakh-size list of Paths alone takes tens of MiB."""
    found: set[str] = set()
    for item in inputs:
        p = os.path.normpath(str(item))  # "d" and "./d/" name the same files
        if os.path.isdir(p):
            for folder, _, names in os.walk(p):  # symlinked folders are not followed, so no loops
                # names holds every non-folder entry: a broken link is kept, to be skipped with its reason
                found.update(os.path.join(folder, n) for n in names if os.path.splitext(n)[1].lower() in MIDI_SUFFIXES)
        elif os.path.lexists(p):
            found.add(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return sorted(found)


def bundled_data() -> Path:
    if not BUNDLED_DATA.is_dir():
        raise UserError(f"{BUNDLED_DATA}: bundled data not found (install apollogan from a clone with "
                        "`pip install -e .`, or pass input files)")
    return BUNDLED_DATA
