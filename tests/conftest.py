"""Shared test fixtures: generated media files.

Media is synthesised with numpy (so tests know exactly what is in it), written as a WAV with
the standard library, and transcoded with the ffmpeg command-line tool: an encoder that Loa's
decoder (PyAV) did not produce itself.

    make_tone_file(path, 440, 2.0, 44100, 2, "mp3")
    make_audio_file(path, samples, 22050, "wav")          # samples: (n,) or (n, channels)
    media_dir / tone_files                                 # session-scoped, built once
"""
from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

FFMPEG = shutil.which("ffmpeg")

# fmt -> ffmpeg codec arguments. The container follows the file name's extension.
_CODEC_ARGS: dict[str, list[str]] = {
    "wav": ["-c:a", "pcm_s16le"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "96k"],
    "opus": ["-c:a", "libopus", "-b:a", "64k"],          # ogg/opus (.ogg or .opus)
    "vorbis": ["-c:a", "libvorbis", "-q:a", "4"],        # ogg/vorbis (.ogg)
    "flac": ["-c:a", "flac"],
    "aac": ["-c:a", "aac", "-b:a", "64k"],               # m4a
}


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5,
         channels: int = 1) -> np.ndarray:
    """A float sine of shape (n, channels), same signal in every channel."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    """16-bit PCM WAV from float samples in [-1, 1], shape (n,) or (n, channels)."""
    path = Path(path)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    pcm = np.clip(np.rint(x * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def require_tool(name: str, why: str = "") -> str:
    """The path of a program this test needs. `make test` installs every one of them (see
    APT_PACKAGES in the Makefile), so a missing one is a broken set-up: fail, never skip."""
    import shutil
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is required{' (' + why + ')' if why else ''}; `make test` "
                    f"installs it (Makefile APT_PACKAGES)", pytrace=False)
    return path


def require_root(why: str) -> None:
    import os
    if os.geteuid() != 0:
        pytest.fail(f"this test must run as root ({why}); `make test` and CI run as root",
                    pytrace=False)


def make_audio_file(path: str | Path, samples: np.ndarray, rate: int, fmt: str) -> Path:
    """Write `samples` (float, (n,) or (n, ch)) at `rate` as `fmt` (a key of _CODEC_ARGS)."""
    path = Path(path)
    if fmt == "wav":
        return write_wav(path, samples, rate)
    ffmpeg = require_tool("ffmpeg", "encodes the test media")
    src = path.with_name(path.name + ".src.wav")
    write_wav(src, samples, rate)
    try:
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
               *_CODEC_ARGS[fmt], str(path)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    finally:
        src.unlink(missing_ok=True)
    return path


def make_tone_file(path: str | Path, freq_hz: float, seconds: float, rate: int = 48_000,
                   channels: int = 1, fmt: str = "wav", amplitude: float = 0.5) -> Path:
    """A sine tone file: every channel carries the same tone."""
    return make_audio_file(path, tone(freq_hz, seconds, rate, amplitude, channels), rate, fmt)


# name -> (freq_hz, seconds, rate, channels, fmt): the formats Loa promises to play
TONE_FILES: dict[str, tuple[float, float, int, int, str]] = {
    "stereo_44k1.mp3": (440.0, 1.5, 44_100, 2, "mp3"),
    "mono_22k05.wav": (1000.0, 1.3, 22_050, 1, "wav"),
    "mono_48k.opus.ogg": (660.0, 1.2, 48_000, 1, "opus"),
    "stereo_44k1.vorbis.ogg": (550.0, 1.2, 44_100, 2, "vorbis"),
    "mono_96k.flac": (1500.0, 1.1, 96_000, 1, "flac"),
    "mono_8k.m4a": (300.0, 1.4, 8_000, 1, "aac"),
    "six_ch_48k.wav": (800.0, 0.9, 48_000, 6, "wav"),
}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def tone_files(media_dir) -> dict[str, tuple[Path, tuple[float, float, int, int, str]]]:
    """Generated once per session: name -> (path, (freq_hz, seconds, rate, channels, fmt))."""
    out = {}
    for name, spec in TONE_FILES.items():
        freq, seconds, rate, channels, fmt = spec
        out[name] = (make_tone_file(media_dir / name, freq, seconds, rate, channels, fmt), spec)
    return out


# ------------------------------------------------------------- shared by unit and integration
#: three 1 s segments at 48 kHz, each a distinct tone (the `segments_wav` fixture)
SEG_HZ = (440.0, 880.0, 1320.0)


@pytest.fixture(scope="module")
def segments_wav(tmp_path_factory):
    """Three 1 s segments at 48 kHz, each a distinct tone (SEG_HZ)."""
    x = np.concatenate([tone(f, 1.0, 48_000, 0.4)[:, 0] for f in SEG_HZ])
    return write_wav(tmp_path_factory.mktemp("rw") / "segments.wav", x, 48_000)


#: the zones of the `state` fixture: a, with b (one static 40 ms destination) and c below it
STATE_TOML = """
cellular_ptime_ms = 40
[[zones]]
id = "a"
[[zones]]
id = "b"
parent = "a"
unicast = ["127.0.0.1:7000"]
[[zones]]
id = "c"
parent = "a"
"""


@pytest.fixture
async def state(tmp_path):
    """control.service.ControlState over a fresh database with STATE_TOML applied; what it
    sends the engine is recorded in `state.swaps`."""
    from control import auth
    from control.db import Database
    from control.service import ControlState
    from control.settings import load_settings
    cfg = tmp_path / "c.toml"
    cfg.write_text(STATE_TOML)
    settings = load_settings(cfg, data_dir=tmp_path)
    db = await Database(tmp_path / "s.db").open()
    swaps: list = []
    st = ControlState(db, settings, auth.SecretBox.load(None, tmp_path / "k"),
                      apply_tree=lambda t: swaps.append(("tree", None)),
                      apply_zones=lambda t, z: swaps.append(("zones", set(z))))
    await st.apply_config()
    st.swaps = swaps
    yield st
    await db.close()
