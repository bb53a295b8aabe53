"""streamer/tts/service.py: the request path's work is done once per text and per sentence
(warm cache → first packet): a text is checked and cut once, a sentence's loudness measured
once. A stand-in engine, no synthesis process."""
from __future__ import annotations

import numpy as np

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
