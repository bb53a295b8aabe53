from __future__ import annotations

import math
import wave

import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE, db_to_gain
from streamer.ingest.tones import (ChimeSource, SilenceSource, SirenSource, ToneSource,
                                   write_tone_wav)


def read_all(src) -> np.ndarray:
    frames = []
    for _ in range(100_000):
        if src.finished:
            break
        f = src.read()
        assert f is not None, "a synthesised source never underruns"
        assert f.shape == (FRAME_SAMPLES,) and f.dtype == np.float32
        frames.append(f.copy())
    assert src.finished and src.read() is None and not src.ready()
    return np.concatenate(frames) if frames else np.zeros(0, np.float32)


def dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=max(len(x), 1 << 16)))
    return float(np.argmax(spec) * SAMPLE_RATE / (2 * (len(spec) - 1)))


def max_step(x: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(np.concatenate([[0.0], x, [0.0]])))))


@pytest.mark.parametrize("seconds", [3.0, 12.5])
def test_tone(seconds):
    src = ToneSource(1000, seconds, amplitude_dbfs=-16, fade_ms=5)
    assert src.ready() and not src.finished
    x = read_all(src)
    assert len(x) == math.ceil(seconds * 50) * FRAME_SAMPLES
    assert abs(dominant_hz(x) - 1000) < 1.0
    amp = db_to_gain(-16)
    assert np.max(np.abs(x)) == pytest.approx(amp, rel=1e-3)
    # no click: starts and ends at zero, and never jumps more than a sine's own slope allows
    assert abs(x[0]) < 1e-6
    assert np.all(np.abs(x[int(seconds * SAMPLE_RATE):]) < 1e-6)
    assert max_step(x) <= 2 * np.pi * 1000 / SAMPLE_RATE * amp * 1.01
    # the fade takes 5 ms: the first ms is well below full level, after 6 ms it is full
    assert np.max(np.abs(x[:48])) < 0.2 * amp
    assert np.max(np.abs(x[288:336])) > 0.99 * amp
    assert src.frames_read == len(x) // FRAME_SAMPLES


def test_tone_rewind_is_exact():
    src = ToneSource(440, 2.0)
    first = [src.read().copy() for _ in range(60)]
    src.rewind(0.4)
    assert src.position_s == pytest.approx(0.8)
    again = [src.read().copy() for _ in range(20)]
    for a, b in zip(first[40:], again):
        np.testing.assert_array_equal(a, b)
    src.rewind(100)
    assert src.position_s == 0.0
    np.testing.assert_array_equal(src.read(), first[0])


def test_construction_is_cheap_after_first_use():
    import time
    ChimeSource(), SirenSource(5.0)                 # warm the per-process caches
    t0 = time.perf_counter()
    for _ in range(20):
        ToneSource(1000, 600.0), ChimeSource(), SirenSource(600.0), SilenceSource(60.0)
    assert (time.perf_counter() - t0) / 20 < 0.005
    assert ChimeSource()._frames is ChimeSource()._frames   # shared, read-only


def test_frames_are_read_only():
    for src in (ToneSource(), ChimeSource(), SirenSource(2.0), SilenceSource(1.0)):
        f = src.read()
        with pytest.raises(ValueError):
            f[0] = 1.0


@pytest.mark.parametrize("descending", [False, True])
def test_chime(descending):
    src = ChimeSource(descending=descending, amplitude_dbfs=-12)
    x = read_all(src)
    assert 2.0 <= len(x) / SAMPLE_RATE <= 3.0
    assert np.max(np.abs(x)) == pytest.approx(db_to_gain(-12), rel=1e-3)
    assert abs(x[0]) < 1e-3 and np.max(np.abs(x[-FRAME_SAMPLES:])) < 1e-3
    # each note rings in turn: the strongest pitch right after each onset is that note
    notes = src.notes_hz
    assert list(notes) == sorted(notes, reverse=descending)
    for f0, onset in zip(notes, src.onsets_s):
        i = int((onset + 0.02) * SAMPLE_RATE)
        assert abs(dominant_hz(x[i:i + 9600]) - f0) < 8, (f0, onset)
    # bell-like: it decays; the last 0.3 s is much quieter than the loudest 0.3 s
    win = int(0.3 * SAMPLE_RATE)
    rms = [np.sqrt(np.mean(x[i:i + win] ** 2)) for i in range(0, len(x) - win, win)]
    assert rms[-1] < 0.25 * max(rms)
    # no clicks beyond what the highest partial's slope allows
    top = max(notes) * max(p[0] for p in ChimeSource.PARTIALS)
    assert max_step(x) <= 2 * np.pi * top / SAMPLE_RATE * db_to_gain(-12) * 1.5


def test_chime_rewind():
    src = ChimeSource()
    first = read_all(src)
    src.rewind(1.0)
    assert not src.finished
    again = read_all(src)
    np.testing.assert_array_equal(again, first[-len(again):])
    assert len(again) == 50 * FRAME_SAMPLES


def test_siren_sweeps():
    src = SirenSource(8.0, low_hz=600, high_hz=1200, period_s=4.0)
    x = read_all(src)
    assert len(x) == 400 * FRAME_SAMPLES
    n = int(0.05 * SAMPLE_RATE)
    # low at the start of each period, high at the middle (sine + 3rd harmonic: take < 2 kHz)
    for t, want in ((0.1, 600), (2.0, 1200), (4.0, 600), (6.0, 1200), (1.0, 900)):
        i = int(t * SAMPLE_RATE) - n // 2
        seg = x[i:i + n]
        spec = np.abs(np.fft.rfft(seg * np.hanning(n), n=1 << 16))
        freqs = np.fft.rfftfreq(1 << 16, 1 / SAMPLE_RATE)
        got = freqs[np.argmax(spec * (freqs < 2000))]
        assert abs(got - want) < want * 0.05, (t, got, want)
    assert max_step(x) < 2 * np.pi * 3 * 1200 / SAMPLE_RATE   # continuous phase: no jumps
    assert abs(x[0]) < 1e-6 and abs(x[-1]) < 1e-3


@pytest.mark.parametrize("period_s", [4.0, 4.01])   # loops a cached period / renders per frame
def test_long_siren_matches_closed_form(period_s):
    src = SirenSource(60.0, period_s=period_s)
    assert (src._period is not None) == (period_s == 4.0)
    frames = [src.read().copy() for _ in range(src.total_frames)]
    assert src.finished
    for i in (0, 1, 2, 199, 200, 201, 1234, 2997, 2998, 2999):
        t = (i * FRAME_SAMPLES + np.arange(FRAME_SAMPLES)) / SAMPLE_RATE
        np.testing.assert_allclose(frames[i], src._render(t), atol=2e-5, err_msg=str(i))
    x = np.concatenate(frames)
    assert abs(x[0]) < 1e-6 and abs(x[-1]) < 1e-4
    assert max_step(x) < 2 * np.pi * 3 * 1200 / SAMPLE_RATE
    src.rewind(1.0)
    np.testing.assert_array_equal(src.read(), frames[-50])


def test_silence():
    src = SilenceSource(0.5)
    x = read_all(src)
    assert len(x) == 25 * FRAME_SAMPLES and not np.any(x)
    src.rewind(0.2)
    assert src.position_s == pytest.approx(0.3) and not src.finished


def test_zero_length_and_close():
    src = ToneSource(seconds=0.0)
    assert src.finished and src.read() is None
    src = ToneSource(seconds=1.0)
    src.read()
    src.close()
    assert src.finished and src.read() is None


def test_bad_parameters():
    with pytest.raises(ValueError):
        ToneSource(freq_hz=30_000)
    with pytest.raises(ValueError):
        ToneSource(seconds=-1)
    with pytest.raises(ValueError):
        SirenSource(low_hz=1200, high_hz=600)


def test_write_tone_wav(tmp_path):
    p = write_tone_wav(tmp_path / "t.wav", 1000, 0.5, rate=22_050, channels=2, amplitude=0.25)
    with wave.open(str(p)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22_050, 2, 2)
        assert w.getnframes() == 11_025
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    np.testing.assert_array_equal(pcm[:, 0], pcm[:, 1])
    assert np.max(np.abs(pcm)) == pytest.approx(0.25 * 32767, abs=2)


@pytest.mark.parametrize("freq", [1000.0, 440.0, 997.0, 1234.5])
def test_steady_frames_of_a_periodic_tone_are_reused_and_equal_a_fresh_render(freq):
    """A 1 kHz tone repeats every frame, 440 Hz every 5, 997 Hz every 50; 1234.5 Hz is not
    cached. Every frame (fades included) equals the closed-form render."""
    from streamer.ingest.tones import SynthSource
    tone, ref = ToneSource(freq, 2.0), ToneSource(freq, 2.0)
    frames = [tone.read() for _ in range(tone.total_frames)]
    assert tone.read() is None
    for i, f in enumerate(frames):
        np.testing.assert_allclose(f, SynthSource.frame_at(ref, i), rtol=0, atol=1e-6)
        assert not f.flags.writeable
    assert len(tone._steady) == {1000.0: 1, 440.0: 5, 997.0: 50, 1234.5: 0}[freq]
    assert frames[0][0] == 0.0 and abs(frames[-1][-1]) < 1e-3   # the fades were not cached
