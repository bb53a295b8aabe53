"""streamer/tts/service.py: the request path's work is done once per text and per sentence
(warm cache → first packet): a text is checked and cut once, a sentence's loudness measured
once. A stand-in engine, no synthesis process."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.audio import SAMPLE_RATE
from streamer.tts.service import TtsService


class Sine:
    name, kind, voices, default_voice = "sine", "sine", ("a",), "a"

    def __init__(self) -> None:
        self.calls = 0

    def synthesize(self, sentence, voice, rate, deadline_s=None):
        self.calls += 1
        t = np.arange(SAMPLE_RATE * (1 + len(sentence) % 3)) / SAMPLE_RATE
        yield (0.05 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def test_a_text_is_checked_and_cut_once():
    svc = TtsService()
    a = svc.prepare("Thông báo số 3. Xin cảm ơn.", voice="vi")
    assert svc.prepare("Thông báo số 3. Xin cảm ơn.", voice="vi") is a
    assert svc.prepare("Thông báo số 3. Xin cảm ơn.", voice="vi-vn-x-south") is not a
    for i in range(100):   # bounded
        svc.prepare(f"Câu {i}.")
    assert len(svc._prepared) <= 64


def test_a_sentences_gain_is_measured_once_and_applied(monkeypatch):
    eng = Sine()
    svc = TtsService([eng], default_engine="sine", loudness_target=-16.0)
    measured = []
    real = svc.gain
    monkeypatch.setattr(svc, "gain", lambda pcm: measured.append(1) or real(pcm))
    first = svc.render_gained("Một câu.", eng, "a", 1.0)
    again = svc.render_gained("Một câu.", eng, "a", 1.0)
    assert len(measured) == 1 and np.array_equal(first, again)
    raw = np.concatenate(list(Sine().synthesize("Một câu.", "a", 1.0)))
    assert np.allclose(first, raw * np.float32(real(raw)))
    assert float(np.sqrt(np.mean(first ** 2))) > float(np.sqrt(np.mean(raw ** 2)))  # louder


class _FakeProcesses:
    """SynthesisProcesses as TtsService sees it, without processes."""
    ready = True

    def __init__(self, answer) -> None:
        self.answer = answer
        self.asked: list[tuple[str, int, float]] = []

    def prepare_text(self, text: str, max_chars: int, timeout: float = 30.0):
        self.asked.append((text, max_chars, timeout))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_texts_are_cut_by_a_worker_and_here_when_it_is_busy_or_gone():
    from streamer.tts.text import TextError
    text = "Bão số 3 đổ bộ. Bà con di dời trước 16h."
    here = TtsService().prepare(text)
    # the worker's answer is what prepare returns (nothing cut again here)
    svc = TtsService()
    svc.processes = _FakeProcesses((True, "checked", "the words", ("a.", "b.")))  # type: ignore[assignment]
    p = svc.prepare(text)
    assert (p.text, p.words, p.sentences) == ("checked", "the words", ("a.", "b."))
    assert svc.processes.asked[0][:2] == (text, svc.max_chars)
    assert 0.25 < svc.processes.asked[0][2] < 1.0      # bounded by the text's length
    # its refusal keeps its code
    svc = TtsService()
    svc.processes = _FakeProcesses((False, "unreadable_script", "CJK", ()))  # type: ignore[assignment]
    with pytest.raises(TextError) as e:
        svc.prepare(text)
    assert e.value.code == "unreadable_script"
    # busy past the bound (an emergency's cloud sentence), or broken: cut here, same result
    for trouble in (TimeoutError(), RuntimeError("broken pool")):
        svc = TtsService()
        svc.processes = _FakeProcesses(trouble)  # type: ignore[assignment]
        p = svc.prepare(text)
        assert (p.words, p.sentences) == (here.words, here.sentences)
