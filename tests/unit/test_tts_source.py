"""streamer.tts.source and service, pure: a fake engine and a pool that runs jobs inline."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES
from streamer.tts.engines import EspeakEngine, TtsError
from streamer.tts.service import TtsService
from streamer.tts.source import Timeline, TtsSource, to_frames


class FakeEngine:
    """Each sentence: len(words) * 0.1 s of a tone whose amplitude encodes the sentence."""
    kind = "fake"

    def __init__(self, name: str = "fake", fail_from: int | None = None,
                 error: TtsError | None = None) -> None:
        self.name = name
        self.voices = ("a", "b")
        self.default_voice = "a"
        self.calls: list[str] = []
        self.fail_from = fail_from
        self.error = error or TtsError("HTTP 500: boom", status=500)

    def synthesize(self, sentence: str, voice: str, rate: float,
                   deadline_s: float | None = None) -> Iterator[np.ndarray]:
        self.calls.append(sentence)
        if self.fail_from is not None and len(self.calls) > self.fail_from:
            raise self.error
        n = int(len(sentence.split()) * 4800 / rate)
        yield np.full(n, 0.1, np.float32)


class FakeEspeak(EspeakEngine):
    def synthesize(self, sentence: str, voice: str, rate: float,
                   deadline_s: float | None = None) -> Iterator[np.ndarray]:
        yield np.full(4800 * len(sentence.split()), 0.2, np.float32)


class InlinePool:
    def __init__(self) -> None:
        self.jobs: list = []

    def submit(self, job, urgent: bool = False) -> None:
        self.jobs.append((job, urgent))

    def run(self) -> None:
        while self.jobs:
            job, _ = self.jobs.pop(0)
            job()


def service(engine: FakeEngine | None = None) -> tuple[TtsService, InlinePool]:
    engines = [FakeEspeak()] + ([engine] if engine else [])
    svc = TtsService(engines, default_engine=engine.name if engine else "espeak",
                     loudness_target=None)
    pool = InlinePool()
    svc.pool = pool  # type: ignore[assignment]
    return svc, pool


TEXT = ["one two three four five", "six seven", "eight nine ten eleven"]  # 0.5, 0.2, 0.4 s


def drain(src: TtsSource, pool: InlinePool, limit: int = 10_000) -> list[np.ndarray]:
    out = []
    for _ in range(limit):
        pool.run()
        if src.finished:
            break
        f = src.read()
        if f is not None:
            out.append(f)
    return out


def test_frames_pad_the_last_frame_and_apply_gain() -> None:
    f = to_frames(np.ones(FRAME_SAMPLES + 10, np.float32), 0.5)
    assert f.shape == (2, FRAME_SAMPLES)
    assert f[1, 9] == 0.5 and f[1, 10] == 0.0
    assert not f.flags.writeable


def test_sentences_play_in_order_and_each_starts_on_a_frame() -> None:
    eng = FakeEngine()
    svc, pool = service(eng)
    src = TtsSource(svc, TEXT, "fake", "a")
    src.start()
    frames = drain(src, pool)
    assert len(frames) == 25 + 10 + 20
    assert src.timeline.frames == [25, 10, 20]
    assert src.error is None and src.finished
    assert eng.calls == TEXT


def test_rendering_stays_bounded_ahead_of_playout() -> None:
    eng = FakeEngine()
    svc, pool = service(eng)
    src = TtsSource(svc, TEXT * 10, "fake", "a", ahead_s=0.6)
    src.start()
    pool.run()
    assert len(eng.calls) < 5   # parked once 0.6 s are waiting
    frames = drain(src, pool)
    assert len(eng.calls) == 30 and len(frames) == 550


def test_rewind_goes_back_to_the_start_of_the_sentence_being_read() -> None:
    svc, pool = service(FakeEngine())
    src = TtsSource(svc, TEXT, "fake", "a")
    src.start()
    pool.run()
    for _ in range(25 + 4):   # sentence 1, then 4 frames into sentence 2
        assert src.read() is not None
    assert src.position_s == pytest.approx(0.58)
    src.rewind(2.0)
    assert src.position_s == pytest.approx(0.5)
    assert src.sentence_index == 1


def test_reopened_at_an_offset_starts_at_the_sentence_holding_the_cut() -> None:
    svc, pool = service(FakeEngine())
    tl = Timeline(3)
    first = TtsSource(svc, TEXT, "fake", "a", timeline=tl)
    first.start()
    drain(first, pool)
    # the core reopens a fork 2 s before the cut; the cut was at 0.6 s (in sentence 2)
    fork = TtsSource(svc, TEXT, "fake", "a", timeline=tl, start_s=0.6 - 0.3, resume_hint_s=0.3)
    assert fork.start_index == 1 and fork.position_s == pytest.approx(0.5)
    fork.start()
    assert len(drain(fork, pool)) == 30
    # a cut in the last sentence
    fork = TtsSource(svc, TEXT, "fake", "a", timeline=tl, start_s=0.1, resume_hint_s=0.65)
    assert fork.start_index == 2 and fork.position_s == pytest.approx(0.7)


def test_a_failing_engine_ends_a_normal_item_with_a_clear_error() -> None:
    eng = FakeEngine(fail_from=1)
    svc, pool = service(eng)
    src = TtsSource(svc, TEXT, "fake", "a")
    src.start()
    frames = drain(src, pool)
    assert len(frames) == 25          # the first sentence aired, nothing after the failure
    assert src.finished and src.error is not None
    assert "sentence 2" in src.error and "boom" in src.error
    assert src.notice is None


def test_an_emergency_falls_back_to_espeak_and_says_so() -> None:
    eng = FakeEngine(fail_from=0, error=TtsError("did not answer within the deadline",
                                                 timeout=True))
    svc, pool = service(eng)
    src = TtsSource(svc, TEXT, "fake", "a", urgent=True)
    src.start()
    assert pool.jobs and pool.jobs[0][1] is True   # urgent jobs go to the reserved worker
    pool.run()
    assert src.notice is not None and "espeak" in src.notice and "deadline" in src.notice
    frames = drain(src, pool)
    assert len(frames) == 55 and src.error is None and src.fell_back
    assert float(frames[0][0]) == pytest.approx(0.2)   # espeak's audio, not the fake's


def test_prepare_refuses_unknown_voice_engine_and_bad_rate() -> None:
    from streamer.tts.text import TextError
    svc, _ = service(FakeEngine())
    with pytest.raises(TextError) as e:
        svc.prepare("xin chào", voice="nobody")
    assert e.value.code == "unknown_voice"
    with pytest.raises(TextError) as e:
        svc.prepare("xin chào", engine="nope")
    assert e.value.code == "unknown_engine"
    with pytest.raises(TextError) as e:
        svc.prepare("xin chào", rate=5)
    assert e.value.code == "invalid_rate"
    p = svc.prepare("xin chào", voice="vi-vn-x-south")   # espeak's voice picks espeak
    assert (p.engine, p.voice) == ("espeak", "vi-vn-x-south")
    p = svc.prepare("xin chào")
    assert (p.engine, p.voice) == ("fake", "a")


def test_cached_sentences_are_not_synthesised_again(tmp_path) -> None:
    from streamer.tts.cache import TtsCache
    eng = FakeEngine()
    svc, pool = service(eng)
    svc.cache = TtsCache(tmp_path)
    for _ in range(2):
        src = TtsSource(svc, TEXT, "fake", "a")
        src.start()
        drain(src, pool)
    assert eng.calls == TEXT   # the second time from the cache
    assert svc.cache.hits == 3


def test_cache_keeps_under_its_cap(tmp_path) -> None:
    from streamer.tts.cache import TtsCache
    c = TtsCache(tmp_path, max_bytes=10_000)
    for i in range(10):
        c.put(c.key(f"s{i}", "e", "v", 1.0), np.zeros(1000, np.float32))  # 4,000 bytes each
    assert c.size_bytes <= 10_000
    assert sum(p.stat().st_size for p in tmp_path.glob("*.f32")) <= 10_000
    assert c.get(c.key("s9", "e", "v", 1.0)) is not None
    assert c.get(c.key("s0", "e", "v", 1.0)) is None
    assert c.key("a", "e", "v", 1.0) != c.key("a", "e", "v", 1.1)
