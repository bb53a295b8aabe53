"""The catalogue: every source description becomes the right Source, a programme reopens
part-way (a preempted item resumes where it was cut), files are analysed once. No Source is
started here when it would start a decoder thread."""
import numpy as np
import pytest

from streamer.audio import FRAME_MS, SAMPLE_RATE
from streamer.ingest.base import MediaError
from streamer.ingest.catalogue import Catalogue, analyse, duration_of
from streamer.ingest.file import FileSource
from streamer.ingest.live import LiveSource
from streamer.ingest.sequence import SequenceSource
from streamer.ingest.tones import ChimeSource, SilenceSource, SirenSource, ToneSource
from streamer.port import (ChimeAudio, FileAudio, LiveAudio, Programme, SilenceAudio,
                           SirenAudio, ToneAudio)
from tests.conftest import tone, write_wav


def frames(src, n):
    out = []
    for _ in range(n):
        f = src.read()
        assert f is not None
        out.append(f.copy())
    return out


@pytest.fixture
def cat():
    return Catalogue(loudness_target=-23.0)


def test_file_gets_the_loudness_target_and_its_measured_loudness(cat):
    src = cat.open(FileAudio("/srv/a.mp3", loudness_lufs=-17.0, duration_s=5.0))
    assert isinstance(src, FileSource) and src.path == "/srv/a.mp3"
    assert src.gain_db == pytest.approx(-6.0) and src.start_s == 0.0
    assert Catalogue(None).open(FileAudio("/srv/a.mp3", loudness_lufs=-17.0)).gain_db == 0.0
    assert cat.open(FileAudio("/srv/a.mp3"), start_s=4.5).start_s == 4.5   # resumes seek


@pytest.mark.parametrize("desc, cls, seconds", [
    (ToneAudio(440.0, 2.0, -20.0), ToneSource, 2.0), (ChimeAudio(), ChimeSource, None),
    (SirenAudio(3.0), SirenSource, 3.0), (SilenceAudio(0.4), SilenceSource, 0.4)])
def test_synthesised_kinds(cat, desc, cls, seconds):
    src = cat.open(desc)
    assert isinstance(src, cls)
    if seconds is not None:
        assert src.seconds == seconds == duration_of(desc)
    assert duration_of(desc) == pytest.approx(src.seconds)
    later = cat.open(desc, start_s=0.2)    # a rendered source starts there directly
    assert isinstance(later, cls) and later.position_s == pytest.approx(0.2)
    assert np.array_equal(frames(later, 1)[0], frames(cat.open(desc), 11)[10])
    assert later.position_s == pytest.approx(0.22)   # counted from the item's start


def test_a_long_tone_joined_late_renders_nothing_before_its_offset(cat):
    import time
    t0 = time.perf_counter()
    src = cat.open(ToneAudio(523.0, 4 * 3600.0), start_s=3 * 3600.0)
    first = frames(src, 1)[0]
    assert time.perf_counter() - t0 < 0.05
    assert np.array_equal(first, ToneSource(523.0, 4 * 3600.0).frame_at(3 * 3600 * 50))


def test_tone_parameters_reach_the_source(cat):
    src = cat.open(ToneAudio(440.0, 2.0, -20.0))
    x = np.concatenate(frames(src, 40)[10:])
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[np.argmax(spec)] - 440) < 5
    assert np.max(np.abs(x)) == pytest.approx(10 ** (-20 / 20), rel=0.02)


def test_live_input_is_found_by_id_and_dropped(cat):
    live = LiveSource(kind="webrtc")
    input_id = cat.add_live(live)
    assert cat.open(LiveAudio(input_id)) is live
    assert cat.open(LiveAudio(input_id), start_s=3.0) is live   # live cannot seek
    cat.drop_live(input_id)
    with pytest.raises(MediaError):
        cat.open(LiveAudio(input_id))


def test_programme_attention_repeats_and_pauses(cat):
    desc = Programme(ToneAudio(500.0, 1.0), attention="chime", repeat=2, repeat_pause_s=0.5)
    src = cat.open(desc)
    assert isinstance(src, SequenceSource)
    assert [p.label for p in src.parts] == ["attention", "message 1", "pause", "message 2"]
    chime = ChimeSource().seconds
    assert duration_of(desc) == pytest.approx(chime + 2.5)
    src.start()
    n = round(duration_of(desc) * 1000 / FRAME_MS)
    got = []
    while (f := src.read()) is not None:
        got.append(f)
    assert abs(len(got) - n) <= 2 and src.finished
    siren = cat.open(Programme(ToneAudio(), attention="siren"))
    assert siren.parts[0].duration_s == 6.0


def test_programme_reopened_at_an_offset_resumes_in_the_right_part(cat):
    desc = Programme(ToneAudio(500.0, 1.0), attention="chime", repeat=2, repeat_pause_s=0.5)
    whole = cat.open(desc)
    whole.start()
    chime = ChimeSource().seconds
    cut = chime + 1.0 + 0.5 + 0.3            # 0.3 s into the second message
    k = round(cut * 1000 / FRAME_MS)
    reference = frames(whole, k + 5)[k:]
    resumed = cat.open(desc, start_s=cut)
    resumed.start()
    assert resumed.part_label == "message 2"
    assert resumed.position_s == pytest.approx(cut, abs=0.03)
    got = frames(resumed, 5)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(got, reference))


def test_file_programme_reopens_the_file_at_its_own_offset(cat):
    desc = Programme(FileAudio("/srv/a.wav", -23.0, 10.0), attention=None, repeat=2,
                     repeat_pause_s=2.0)
    src = cat.open(desc, start_s=13.0)       # 1 s into the second play of the file
    assert [p.label for p in src.parts] == ["message 1", "pause", "message 2"]
    part = src.parts[2].factory(1.0)
    assert isinstance(part, FileSource) and part.start_s == 1.0


def test_a_programme_of_live_audio_is_refused(cat):
    with pytest.raises(MediaError):
        cat.factory(Programme(LiveAudio("in-x")))
    with pytest.raises(MediaError):
        cat.factory(Programme(ToneAudio(), attention="klaxon"))


def test_analyse_probes_measures_and_caches(tmp_path):
    path = str(write_wav(tmp_path / "a.wav", tone(1000.0, 1.5, 48_000, 0.25), 48_000))
    info, lufs = analyse(path, -23.0)
    assert info.duration_s == pytest.approx(1.5, abs=0.05) and lufs is not None
    assert -20 < lufs < -10
    assert analyse(path, -23.0)[0] is info                   # cached
    assert analyse(path, None)[1] is None                    # not measured without a target
    with pytest.raises(MediaError):
        analyse(str(tmp_path / "missing.wav"), -23.0)
