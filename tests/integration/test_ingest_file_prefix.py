"""A recording played again is ready at once (its first frames are cached), with identical audio."""
import os
import time

import numpy as np

from streamer.ingest.file import PREFIX_FRAMES, FileSource
from streamer.ingest.tones import write_tone_wav


def play(path, **kw):
    s = FileSource(path, **kw)
    t0 = time.perf_counter()
    s.start()
    ready_now = s.ready()
    frames = []
    deadline = time.monotonic() + 10
    while not s.finished and time.monotonic() < deadline:
        f = s.read()
        if f is None:
            time.sleep(0.001)
        else:
            frames.append(f.copy())
    s.close()
    return ready_now, np.concatenate(frames), time.perf_counter() - t0


def test_second_play_is_ready_at_start_and_identical(tmp_path):
    p = tmp_path / "alert.wav"
    write_tone_wav(p, 700, 2.0)
    first_ready, a, _ = play(p)
    assert not first_ready  # nothing decoded yet the first time
    second_ready, b, _ = play(p)
    assert second_ready
    assert np.array_equal(a, b) and len(b) == 100 * 960


def test_changed_file_is_not_served_from_the_old_prefix(tmp_path):
    p = tmp_path / "jingle.wav"
    write_tone_wav(p, 500, 1.0)
    play(p)
    write_tone_wav(p, 1500, 1.0)
    os.utime(p, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    ready, x, _ = play(p)
    assert not ready
    spec = np.abs(np.fft.rfft(x[: PREFIX_FRAMES * 960]))
    assert abs(np.argmax(spec) * 48000 / (PREFIX_FRAMES * 960) - 1500) < 10


def test_gain_is_part_of_the_key(tmp_path):
    p = tmp_path / "x.wav"
    write_tone_wav(p, 500, 1.0, amplitude=0.25)
    _, a, _ = play(p)
    ready, b, _ = play(p, gain_db=-6.0)
    assert not ready
    assert abs(np.max(np.abs(b)) / np.max(np.abs(a)) - 0.5) < 0.02


def test_start_offset_seeks_instead_of_decoding_the_head(tmp_path):
    """A preempted item resumes by re-opening the file before its cut point: the audio from
    start_s on is the same as playing from 0 and dropping the head, and position says where."""
    from tests.conftest import make_audio_file
    rate = 44100
    t = np.arange(int(rate * 6.0)) / rate
    x = np.where(t < 3.0, 0.4 * np.sin(2 * np.pi * 500 * t), 0.4 * np.sin(2 * np.pi * 900 * t))
    for fmt in ("wav", "mp3", "flac"):
        p = make_audio_file(tmp_path / f"prog.{fmt}", x.astype(np.float32), rate, fmt)
        s = FileSource(p, start_s=2.5)
        assert abs(s.position_s - 2.5) < 0.021
        s.close()
        _, y, _ = play(p, start_s=2.5)
        assert abs(len(y) / 48000 - 3.5) < 0.06, (fmt, len(y) / 48000)
        def dom(seg):
            sp = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
            return np.fft.rfftfreq(len(seg), 1 / 48000)[np.argmax(sp)]
        assert abs(dom(y[:int(0.4 * 48000)]) - 500) < 10, fmt      # 2.5-2.9 s: still 500 Hz
        assert abs(dom(y[int(0.6 * 48000):int(1.4 * 48000)]) - 900) < 10, fmt  # after 3 s
