from __future__ import annotations

import math

import numpy as np
import pytest

from streamer.ingest.base import MediaError
from streamer.mixer.loudness import (LoudnessMeter, analyse_file, integrated_loudness,
                                     k_weighting, measure_file)
from tests.conftest import make_tone_file, write_wav


def sine(freq, seconds, rate, peak_dbfs):
    t = np.arange(int(seconds * rate)) / rate
    return 10 ** (peak_dbfs / 20) * np.sin(2 * np.pi * freq * t)


def test_k_weighting_matches_the_standard_at_48k():
    # ITU-R BS.1770-4, tables 1 and 2
    (b1, a1), (b2, a2) = k_weighting(48_000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285],
                               atol=1e-9)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-9)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-9)


def test_full_scale_997hz_in_one_channel_reads_minus_3_01():
    assert integrated_loudness(sine(997, 5, 48_000, 0.0), 48_000) == pytest.approx(-3.01,
                                                                                   abs=0.02)


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000, 96_000])
def test_minus_20_dbfs_1khz_reads_minus_23_at_any_rate(rate):
    assert integrated_loudness(sine(1000, 3, rate, -20.0), rate) == pytest.approx(-23.0,
                                                                                  abs=0.1)


def test_level_scales_one_to_one():
    x = sine(1000, 3, 48_000, -20.0)
    a = integrated_loudness(x, 48_000)
    b = integrated_loudness(x * 10 ** (-7.5 / 20), 48_000)
    assert a - b == pytest.approx(7.5, abs=1e-6)


def test_k_weighting_shapes_the_spectrum():
    # the shelf lifts highs by ~4 dB; the RLB filter cuts deep lows
    # (the shelf already adds ~0.7 dB at 1 kHz, so 8 kHz reads ~3.3 dB above 1 kHz)
    high = integrated_loudness(sine(8000, 3, 48_000, -20.0), 48_000)
    low = integrated_loudness(sine(25, 3, 48_000, -20.0), 48_000)
    assert high == pytest.approx(-23.0 + 3.34, abs=0.1)
    assert low == pytest.approx(-34.1, abs=0.3)


def test_silence_and_empty():
    assert integrated_loudness(np.zeros(48_000 * 2), 48_000) == -math.inf
    assert integrated_loudness(np.zeros(0), 48_000) == -math.inf
    # below the absolute gate (-70 LUFS) counts as silence too
    assert integrated_loudness(sine(1000, 2, 48_000, -75.0), 48_000) == -math.inf


def test_absolute_gate_ignores_silence_around_speech():
    x = sine(1000, 3, 48_000, -20.0)
    padded = np.concatenate([np.zeros(48_000 * 5), x, np.zeros(48_000 * 5)])
    # 27 blocks fully in the tone; on each edge 3 blocks hold 3/4, 2/4, 1/4 of it (they pass
    # both gates); the blocks of pure silence are dropped by the absolute gate
    edge_db = 10 * math.log10((27 + 2 * (0.75 + 0.5 + 0.25)) / 33)
    assert integrated_loudness(padded, 48_000) == pytest.approx(
        integrated_loudness(x, 48_000) + edge_db, abs=0.01)


def test_relative_gate_like_ebu_tech_3341_case_3():
    # EBU Tech 3341 case 3, in mono: 10 s at -36 LUFS, 60 s at -23, 10 s at -36 -> -23.0 +/-0.1
    # (the quiet parts fall under the -10 LU relative gate)
    r = 48_000
    x = np.concatenate([sine(1000, 10, r, -33.0), sine(1000, 60, r, -20.0),
                        sine(1000, 10, r, -33.0)])
    assert integrated_loudness(x, r) == pytest.approx(-23.0, abs=0.1)
    # while a part only 6 LU down is kept and pulls the result down
    y = np.concatenate([sine(1000, 4, r, -26.0), sine(1000, 4, r, -20.0)])
    assert -26.5 < integrated_loudness(y, r) < -24.0


def test_streaming_equals_one_shot_for_any_chunking():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(44_100 * 4) * 0.1
    whole = integrated_loudness(x, 44_100)
    m = LoudnessMeter(44_100)
    i = 0
    while i < len(x):
        n = int(rng.integers(1, 9000))
        m.feed(x[i:i + n])
        i += n
    assert m.integrated() == pytest.approx(whole, abs=1e-9)
    # 11,025 Hz: 100 ms is not a whole number of samples; steps must still average 100 ms
    y = sine(1000, 3, 11_025, -20.0)
    m = LoudnessMeter(11_025)
    for c in np.array_split(y, 37):
        m.feed(c)
    assert m.integrated() == pytest.approx(-23.0, abs=0.1)
    assert sum(m._sub_lens) == pytest.approx(len(m._sub_lens) * 1102.5, abs=1)


def test_short_clip_gets_a_value():
    assert integrated_loudness(sine(1000, 0.25, 48_000, -20.0), 48_000) == pytest.approx(
        -23.0, abs=0.15)


def test_cross_check_with_pyloudnorm():
    pyln = pytest.importorskip("pyloudnorm")
    rng = np.random.default_rng(1)
    for rate in (44_100, 48_000):
        n = rate * 6
        t = np.arange(n) / rate
        # speech-ish: pink-ish noise bursts plus a few tones, amplitude modulated
        noise = np.cumsum(rng.standard_normal(n)) * 0.002
        noise -= np.convolve(noise, np.ones(200) / 200, mode="same")
        x = (noise + 0.05 * np.sin(2 * np.pi * 220 * t) + 0.03 * np.sin(2 * np.pi * 3100 * t))
        x *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t) ** 2
        x[int(2 * rate):int(2.8 * rate)] = 0.0
        ours = integrated_loudness(x, rate)
        ref = pyln.Meter(rate).integrated_loudness(x)
        assert ours == pytest.approx(ref, abs=0.5), rate
        assert math.isfinite(ours)


def test_measure_file_matches_the_signal(tmp_path):
    p = make_tone_file(tmp_path / "t.wav", 1000, 3.0, 44_100, 1, "wav",
                       amplitude=10 ** (-20 / 20))
    assert measure_file(p) == pytest.approx(-23.0, abs=0.1)
    res = analyse_file(p)
    assert res.peak_dbfs == pytest.approx(-20.0, abs=0.1)
    assert res.duration_s == pytest.approx(3.0, abs=0.01)


def test_measure_file_lossy_formats(tone_files):
    # every tone file holds a 0.5-amplitude sine (-6 dBFS peak): about -9 LUFS as Loa plays it
    for name in ("stereo_44k1.mp3", "mono_48k.opus.ogg", "mono_96k.flac"):
        path, (freq, *_rest) = tone_files[name]
        expected = integrated_loudness(sine(freq, 1.0, 48_000, 20 * np.log10(0.5)), 48_000)
        assert measure_file(path) == pytest.approx(expected, abs=0.5), name


def test_measure_file_max_seconds(tmp_path):
    x = np.concatenate([sine(1000, 2, 48_000, -20.0), sine(1000, 2, 48_000, -6.0)])
    p = write_wav(tmp_path / "two.wav", x, 48_000)
    res = analyse_file(p, max_seconds=2.0)
    assert res.duration_s == pytest.approx(2.0, abs=1e-6)
    assert res.integrated_lufs == pytest.approx(-23.0, abs=0.1)
    assert measure_file(p) > -12.0


def test_measure_file_silence_and_errors(tmp_path):
    p = write_wav(tmp_path / "quiet.wav", np.zeros(48_000), 48_000)
    assert measure_file(p) == -math.inf
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all" * 100)
    with pytest.raises(MediaError):
        measure_file(bad)
    with pytest.raises(MediaError):
        measure_file(tmp_path / "missing.wav")
