"""Rolls as sound, to listen inside TensorBoard.

FluidSynth with a General MIDI soundfont when both are installed (Debian: `apt-get install
fluidsynth fluid-soundfont-gm`; or set APOLLOGAN_SOUNDFONT to any .sf2), otherwise a small
additive synthesiser: enough to hear rhythm, harmony and mistakes.
"""
from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from .midi import notes_to_midi
from .spec import RollSpec

SOUNDFONT_GLOBS = ("/usr/share/sounds/sf2/*.sf2", "/usr/share/soundfonts/*.sf2")


def find_soundfont() -> str | None:
    env = os.environ.get("APOLLOGAN_SOUNDFONT")
    if env and Path(env).is_file():
        return env
    for pattern in SOUNDFONT_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def synth(notes: np.ndarray, spec: RollSpec, tempo: float = 120.0, sample_rate: int = 16000) -> np.ndarray:
    """Additive synthesis: three harmonics with a plucked envelope per note. float32 mono in [-1, 1]."""
    sec_per_step = 60.0 / tempo / spec.steps_per_beat
    end = max(float(notes[:, 2].max()) if len(notes) else 0.0, spec.steps) * sec_per_step + 0.3
    out = np.zeros(int(end * sample_rate) + 1, np.float32)
    for pitch, s, e in np.asarray(notes).tolist():
        n = int((e - s) * sec_per_step * sample_rate)
        t = np.arange(n + int(0.05 * sample_rate)) / sample_rate
        f = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = np.sin(2 * np.pi * f * t) + 0.4 * np.sin(4 * np.pi * f * t) + 0.15 * np.sin(6 * np.pi * f * t)
        env = np.exp(-3.0 * t) * np.minimum(1.0, t * 200)
        env[n:] *= np.linspace(1, 0, len(t) - n)  # short release instead of a click
        i = int(s * sec_per_step * sample_rate)
        seg = out[i:i + len(t)]
        seg += (tone * env)[: len(seg)].astype(np.float32)
    peak = np.abs(out).max()
    return out / peak * 0.8 if peak > 0 else out


def fluidsynth(notes, spec: RollSpec, tempo: float, sample_rate: int, soundfont: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "x.mid", Path(tmp) / "x.wav"
        mid.write_bytes(notes_to_midi(notes, spec, tempo=tempo).dumps_midi())
        subprocess.run(["fluidsynth", "-ni", "-g", "1.0", "-F", str(wav), "-r", str(sample_rate), "-T", "wav",
                        soundfont, str(mid)], check=True, capture_output=True, timeout=120)
        with wave.open(str(wav)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, w.getnchannels())
    return (raw.mean(axis=1) / 32768.0).astype(np.float32)


def render(notes: np.ndarray, spec: RollSpec, tempo: float = 120.0, sample_rate: int = 16000) -> np.ndarray:
    sf = find_soundfont()
    if sf and shutil.which("fluidsynth") and len(notes):
        try:
            return fluidsynth(notes, spec, tempo, sample_rate, sf)
        except (subprocess.SubprocessError, OSError, wave.Error):
            pass  # fall back to the built-in synthesiser rather than lose the log entry
    return synth(notes, spec, tempo, sample_rate)


def to_wav_bytes(wave_f32: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(wave_f32, -1, 1) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()
