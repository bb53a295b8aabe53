"""Programme levels per zone (what the loudspeakers get), as the live page's talk-back."""
from types import SimpleNamespace

import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES
from streamer.mixer.meter import ProgrammeLevels


def bus(amplitude: float) -> SimpleNamespace:
    t = np.arange(FRAME_SAMPLES) / 48000
    return SimpleNamespace(bus=(amplitude * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))


def test_levels_follow_each_programme_to_its_zones():
    m = ProgrammeLevels()
    loud, quiet = ("a",), ("b",)
    programs = {loud: ("thon-1", "thon-2"), quiet: ("thon-3",)}
    for k in range(10):
        m.on_tick(k, programs, {loud: bus(0.5), quiet: bus(0.005)}, None)
    snap = m.snapshot()
    assert set(snap) == {"thon-1", "thon-2", "thon-3"}
    assert snap["thon-1"]["peak_db"] == pytest.approx(-6.0, abs=0.3)
    assert snap["thon-1"]["rms_db"] == pytest.approx(-9.0, abs=1.0)
    assert snap["thon-3"]["peak_db"] == pytest.approx(-46.0, abs=0.5)
    assert m.snapshot(["thon-3", "nowhere"]).keys() == {"thon-3"}


def test_a_silenced_microphone_shows_within_a_second():
    m = ProgrammeLevels()
    key = ("p",)
    programs = {key: ("xa",)}
    for k in range(10):
        m.on_tick(k, programs, {key: bus(0.5)}, None)
    for k in range(10, 60):   # one second of digital silence
        m.on_tick(k, programs, {key: bus(0.0)}, None)
    lv = m.snapshot()["xa"]
    assert lv["peak_db"] < -50 and lv["rms_db"] < -50   # the page warns below -50 dB


def test_zones_that_hear_nothing_are_absent_and_old_programmes_are_forgotten():
    m = ProgrammeLevels()
    for k in range(30):
        key = (f"p{k}",)
        m.on_tick(k, {key: ("z",)}, {key: bus(0.1)}, None)
    assert len(m._levels) <= 2 * 1 + 8 + 1
    m.on_tick(31, {}, {}, None)
    assert m.snapshot() == {}
