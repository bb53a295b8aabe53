from __future__ import annotations

import os
import subprocess
import threading
import time

import numpy as np
import pytest

import streamer.ingest.file as file_mod
from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.ingest.base import MediaError
from streamer.ingest.decode_pool import DecodePool
from streamer.ingest.file import DecodeError, FileSource, MediaInfo, PEAK_CEILING, probe
from tests.conftest import FFMPEG, require_tool, tone, write_wav
from tests.unit.test_ingest_file import _assert_rejected, drain, play  # shared helpers


def peak_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("long") / "long.wav",
                     tone(500, 30.0, 16_000, 0.3), 16_000)


def _wait_until(cond, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.mark.parametrize("name", ["stereo_44k1.mp3", "mono_22k05.wav", "mono_48k.opus.ogg",
                                  "stereo_44k1.vorbis.ogg", "mono_96k.flac", "mono_8k.m4a",
                                  "six_ch_48k.wav"])
def test_every_format_decodes_to_the_tone(tone_files, name):
    path, (freq, seconds, rate, channels, fmt) = tone_files[name]
    info = probe(path)
    assert isinstance(info, MediaInfo)
    assert info.sample_rate == rate
    assert info.channels == channels
    assert info.duration_s == pytest.approx(seconds, abs=0.08)

    src, frames = play(path)
    assert src.error is None
    assert src.finished
    x = np.concatenate(frames)
    # whole frames: the last one is padded, so compare with 20 ms of slack on top of 40 ms
    assert abs(len(x) / SAMPLE_RATE - seconds) <= 0.040 + 0.020
    # the audio itself is no shorter than the source by more than 40 ms either
    nonzero = np.flatnonzero(np.abs(x) > 1e-3)
    assert abs((nonzero[-1] + 1) / SAMPLE_RATE - seconds) <= 0.040
    assert abs(peak_hz(x[: int(seconds * SAMPLE_RATE)]) - freq) <= 5.0
    # downmix averages channels: a 0.5-amplitude tone in every channel stays 0.5 (not +3 dB)
    mid = x[int(0.2 * SAMPLE_RATE): int((seconds - 0.2) * SAMPLE_RATE)]
    rms_db = 20 * np.log10(np.sqrt(np.mean(mid.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=1.0)
    assert src.frames_read == len(frames)
    assert src.position_s == pytest.approx(len(frames) * 0.02)


def test_random_bytes(tmp_path):
    p = tmp_path / "noise.mp3"
    p.write_bytes(np.random.default_rng(7).bytes(30_000))
    _assert_rejected(p)


def test_truncated_mp3_header(tmp_path, tone_files):
    good, _ = tone_files["stereo_44k1.mp3"]
    data = good.read_bytes()
    for cut in (4, 60, 300):
        p = tmp_path / f"cut{cut}.mp3"
        p.write_bytes(data[:cut])
        _assert_rejected(p)
    p = tmp_path / "header_then_garbage.mp3"
    p.write_bytes(data[:60] + np.random.default_rng(3).bytes(8000))
    _assert_rejected(p)


def test_text_file_renamed_mp3(tmp_path):
    p = tmp_path / "notice.mp3"
    p.write_text("Thông báo: họp thôn lúc 7 giờ tối.\n" * 100, encoding="utf-8")
    _assert_rejected(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    assert "empty" in _assert_rejected(p)


def test_directory(tmp_path):
    d = tmp_path / "album.mp3"
    d.mkdir()
    assert "directory" in _assert_rejected(d)


def test_missing_file(tmp_path):
    assert "not found" in _assert_rejected(tmp_path / "nope.ogg")


def test_no_audio_stream(tmp_path):
    require_tool("ffmpeg", "draws a picture with no audio stream")
    p = tmp_path / "picture.png"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=red:s=16x16", "-frames:v", "1", str(p)], check=True, timeout=30)
    assert "no audio" in _assert_rejected(p)


def test_garbage_tail_ends_cleanly_with_error(tmp_path, tone_files):
    """Good audio then junk: what decoded plays, then the source ends with `error` set."""
    good, (_, seconds, *_rest) = tone_files["stereo_44k1.mp3"]
    data = good.read_bytes()
    half = len(data) // 2
    p = tmp_path / "broken.mp3"
    p.write_bytes(data[:half] + np.random.default_rng(11).bytes(120_000))
    probe(p)  # the start is fine, so probe accepts it
    src, frames = play(p)
    assert src.finished
    assert src.error and "corrupt" in src.error
    played = len(frames) * 0.02
    assert 0.3 * seconds < played < 0.75 * seconds
    assert abs(peak_hz(np.concatenate(frames)) - 440) <= 5


def test_decode_error_mid_file_keeps_frames(monkeypatch):
    """Deterministic version: the decoder fails after 5 frames' worth of audio."""
    def fake(path, max_decode_errors=3, stop=None):
        for _ in range(5):
            yield np.full(FRAME_SAMPLES, 0.25, dtype=np.float32)
        raise DecodeError("x.mp3 is corrupt at 0.10 s (Invalid data)", 0.1)

    monkeypatch.setattr(file_mod, "decode_mono48", fake)
    src, frames = play("x.mp3")
    assert len(frames) == 5 and all(np.all(f == 0.25) for f in frames)
    assert src.error == "x.mp3 is corrupt at 0.10 s (Invalid data)"
    assert src.finished


def test_rewind_replays_history_then_continues(segments_wav):
    _, reference = play(segments_wav)
    assert len(reference) == 150

    src = FileSource(segments_wav, history_s=10.0)
    src.start()
    first = drain(src, limit=75)             # 1.5 s: into the 880 Hz segment
    assert abs(peak_hz(first[-1]) - 880) < 60
    src.rewind(1.0)
    assert src.position_s == pytest.approx(0.5)
    assert src.ready()
    replay = drain(src, limit=25)            # 0.5 s .. 1.0 s: back in the 440 Hz segment
    assert all(abs(peak_hz(f) - 440) < 60 for f in replay)
    rest = drain(src)
    src.close()
    assert not src.error
    got = first + replay + rest
    expected = reference[:75] + reference[25:]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert src.position_s == pytest.approx(3.0)


def test_rewind_is_bounded_by_history_and_accumulates(segments_wav):
    _, reference = play(segments_wav)
    src = FileSource(segments_wav, history_s=0.5)   # 25 frames of history
    src.start()
    drain(src, limit=100)
    src.rewind(1.0)                                 # only 0.5 s is kept
    assert src.position_s == pytest.approx(1.5)
    src.rewind(5.0)                                 # nothing more to give
    assert src.position_s == pytest.approx(1.5)
    part = drain(src, limit=10)
    src.rewind(0.1)                                 # rewind while replaying
    assert src.position_s == pytest.approx(1.6)
    part += drain(src, limit=30)
    src.close()
    expected = reference[75:85] + reference[80:110]
    for a, b in zip(part, expected):
        np.testing.assert_array_equal(a, b)


def test_rewind_before_anything_read_is_harmless(segments_wav):
    src = FileSource(segments_wav)
    src.rewind(3.0)
    assert src.position_s == 0.0
    src.start()
    frames = drain(src)
    src.close()
    assert len(frames) == 150


def test_returned_frames_are_read_only(segments_wav):
    src = FileSource(segments_wav)
    src.start()
    assert src.wait_ready(2.0)
    fresh = src.read()
    src.rewind(0.02)
    replayed = src.read()
    np.testing.assert_array_equal(fresh, replayed)
    for f in (fresh, replayed):
        with pytest.raises(ValueError):
            f[0] = 1.0
    src.close()


def test_queue_bound_respected(long_wav):
    src = FileSource(long_wav, queue_frames=10)
    src.start()
    _wait_until(lambda: src.queued_frames == 10)
    time.sleep(0.2)  # a worker that ignored the bound would decode all 30 s by now
    assert src.queued_frames == 10
    assert src.decoded_frames <= 10
    assert src.worker_alive and not src.finished
    for _ in range(4):
        assert src.read() is not None
    _wait_until(lambda: src.queued_frames == 10)
    time.sleep(0.1)
    assert src.queued_frames == 10 and src.decoded_frames <= 14
    src.close()


def test_close_joins_worker_promptly(long_wav):
    src = FileSource(long_wav, queue_frames=5)
    src.start()
    assert src.wait_ready(2.0)
    assert src.worker_alive
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0
    assert not src.worker_alive
    assert src.finished and src.read() is None
    src.close()  # idempotent


def test_close_without_start_and_many_sources_leak_no_threads(long_wav):
    FileSource(long_wav).close()
    pool = DecodePool(workers=2)
    before = threading.active_count()
    sources = [FileSource(long_wav, queue_frames=3, pool=pool) for _ in range(40)]
    for s in sources:
        s.start()
    for s in sources:
        assert s.wait_ready(5.0)
    _wait_until(lambda: all(s.queued_frames == 3 for s in sources))
    # 40 files decoding: the pool's two workers, never a thread per file (issue 13: 600
    # files made 1,809 threads)
    assert threading.active_count() - before == 2
    assert all(s.worker_alive for s in sources)         # parked on their full queues
    for s in sources:
        s.close()
    assert not any(s.worker_alive for s in sources)
    assert pool.jobs == 0
    pool.close()
    assert pool.threads == 0


def test_underrun_counted_only_while_waiting(monkeypatch):
    gate = threading.Event()

    def slow(path, max_decode_errors=3, stop=None):
        yield np.zeros(FRAME_SAMPLES, dtype=np.float32)
        gate.wait(5)
        yield np.zeros(FRAME_SAMPLES // 2, dtype=np.float32)

    monkeypatch.setattr(file_mod, "decode_mono48", slow)
    src = FileSource("slow.wav")
    assert src.read() is None and src.underruns == 0   # not started: not an underrun
    src.start()
    assert src.wait_ready(2.0)
    assert src.read() is not None
    assert src.read() is None and src.read() is None
    assert src.underruns == 2 and not src.finished
    gate.set()
    frames = drain(src)
    assert len(frames) == 1 and src.finished           # half frame, padded with zeros
    before = src.underruns
    assert src.read() is None
    assert src.underruns == before                       # finished: no underrun
    src.close()


def test_gain_db(segments_wav):
    _, ref = play(segments_wav)
    _, quiet = play(segments_wav, gain_db=-6.0)
    np.testing.assert_allclose(np.concatenate(quiet), np.concatenate(ref) * 10 ** (-6 / 20),
                               atol=1e-6)


def test_peak_protection_never_pushes_past_ceiling(segments_wav):
    # the file peaks at 0.4 (-8 dBFS); +12 dB would put it at 1.6
    src, frames = play(segments_wav, loudness_target_lufs=-3.0, measured_lufs=-15.0)
    x = np.concatenate(frames)
    assert np.max(np.abs(x)) <= PEAK_CEILING + 1e-6
    assert np.max(np.abs(x)) >= PEAK_CEILING - 0.01
    assert src.applied_gain_db == pytest.approx(20 * np.log10(PEAK_CEILING / 0.4), abs=0.05)


def test_peak_protection_does_not_attenuate_below_unity(tmp_path):
    p = write_wav(tmp_path / "hot.wav", tone(300, 0.5, SAMPLE_RATE, 0.999), SAMPLE_RATE)
    src, frames = play(p, gain_db=3.0)
    assert src.applied_gain_db == pytest.approx(0.0, abs=1e-6)
    assert np.max(np.abs(np.concatenate(frames))) == pytest.approx(0.999, abs=1e-3)


def test_permission_denied_real(tmp_path):
    """An unreadable file: a clear error naming it, nothing played. Root reads any file, so when
    the tests run as root (they do under make test) the check runs in a forked child that has
    become `nobody`: a process of its own, hence an integration test."""
    import json

    from streamer.ingest import decode_pool
    p = write_wav(tmp_path / "secret.wav", tone(440, 0.2, 8000), 8000)
    p.chmod(0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                      # the child: drop root, then do what a server does
        code = 1
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            decode_pool._DEFAULT = None                # the parent's workers did not fork
            decode_pool._DEFAULT_LOCK = threading.Lock()
            out: dict = {}
            try:
                probe(p)
            except MediaError as e:
                out["probe"] = str(e)
            src = FileSource(p)
            src.start()
            out["played"] = len(drain(src, timeout=3.0))
            out["error"], out["finished"] = src.error, src.finished
            src.close()
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, raw
    got = json.loads(raw)
    msg = got.get("probe") or ""
    assert "permission" in msg.lower() and "secret.wav" in msg, got
    assert got["played"] == 0 and got["error"] and got["finished"], got
