"""Emergency broadcasts start with an attention signal and may repeat with a pause."""
import numpy as np

from control.sources import BroadcastRequest, describe_request
from streamer.audio import SAMPLE_RATE
from streamer.ingest.catalogue import Catalogue, duration_of


def build_source(req, loudness_target, default_attention):
    """The request as control describes it, opened by the engine's catalogue."""
    desc, details = describe_request(req, default_attention)
    return (lambda start_s: Catalogue(loudness_target).open(desc, start_s)), details, \
        duration_of(desc)


def frames_of(src, limit=5000):
    src.start()
    out = []
    for _ in range(limit):
        if src.finished:
            break
        f = src.read()
        if f is not None:
            out.append(np.array(f))
    src.close()
    return np.concatenate(out)


def dominant(x):
    s = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(s)]


def test_emergency_gets_chime_then_message_repeated_with_pause():
    req = BroadcastRequest.model_validate({
        "zones": ["z"], "level": "emergency", "repeat": 2, "repeat_pause_s": 1.0,
        "source": {"kind": "tone", "freq_hz": 1500, "seconds": 1.0}})
    make, desc, total = build_source(req, -16.0, "chime")
    assert desc["attention"] == "chime" and desc["repeat"] == 2
    x = frames_of(make(0.0))
    chime_s = total - 3.0
    assert 1.5 < chime_s < 5.0
    assert abs(len(x) / SAMPLE_RATE - total) < 0.1
    c = int(chime_s * SAMPLE_RATE)
    assert abs(dominant(x[:c]) - 1500) > 50  # the chime is not the message
    msg1 = x[c:c + SAMPLE_RATE]
    pause = x[c + SAMPLE_RATE + 2400:c + 2 * SAMPLE_RATE - 2400]
    msg2 = x[c + 2 * SAMPLE_RATE:c + 3 * SAMPLE_RATE]
    assert abs(dominant(msg1) - 1500) < 5 and abs(dominant(msg2) - 1500) < 5
    assert np.max(np.abs(pause)) < 1e-3


def test_attention_off_and_normal_level_play_the_message_alone():
    for body in ({"level": "emergency", "attention": False}, {"level": "normal"}):
        req = BroadcastRequest.model_validate(dict(body, zones=["z"], source={
            "kind": "tone", "freq_hz": 700, "seconds": 1.0}))
        make, _, total = build_source(req, -16.0, "chime")
        assert total == 1.0
        x = frames_of(make(0.0))
        assert abs(len(x) / SAMPLE_RATE - 1.0) < 0.03


def test_resume_part_way_through_a_sequence_lands_in_the_right_part():
    req = BroadcastRequest.model_validate({
        "zones": ["z"], "level": "emergency", "attention_kind": "siren", "repeat": 2,
        "repeat_pause_s": 0.5, "source": {"kind": "tone", "freq_hz": 900, "seconds": 2.0}})
    make, _, total = build_source(req, -16.0, "chime")
    siren_s = total - 4.5
    x = frames_of(make(siren_s + 2.5 + 0.5))  # 0.5 s into the second message
    assert abs(len(x) / SAMPLE_RATE - 1.5) < 0.05
    assert abs(dominant(x) - 900) < 5
