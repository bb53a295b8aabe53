"""Playlists (streamer/ingest/playlist.py through the catalogue): items in order, a slot cut
at its end with a linear fade (items repeated until then), a playlist joined in progress landing in the right item and
still ending at the slot's end, and no allocation per frame outside the fade."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.ingest.base import MediaError
from streamer.ingest.catalogue import Catalogue, duration_of
from streamer.port import LiveAudio, PlaylistAudio, RelayAudio, SilenceAudio, ToneAudio


def drain(src, limit=100_000):
    src.start()
    out = []
    for _ in range(limit):
        f = src.read()
        if f is None:
            if src.finished:
                break
            continue
        out.append(f.copy())
    return out


def hz(frames):
    x = np.concatenate(frames)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * 48_000 / len(x))


def peak(f):
    return float(np.max(np.abs(f)))


def test_items_play_in_order_and_end_with_the_last():
    d = PlaylistAudio((ToneAudio(500.0, 1.0), ToneAudio(800.0, 0.6), ToneAudio(1200.0, 0.4)))
    assert duration_of(d) == pytest.approx(2.0)
    frames = drain(Catalogue().open(d))
    assert len(frames) == 100
    assert abs(hz(frames[5:45]) - 500) < 30
    assert abs(hz(frames[55:78]) - 800) < 30
    assert abs(hz(frames[82:98]) - 1200) < 30


def test_a_slot_cuts_the_playlist_with_a_fade():
    d = PlaylistAudio((ToneAudio(500.0, 2.0, -6.0), ToneAudio(800.0, 5.0, -6.0)), slot_s=3.0,
                      fade_s=1.0)
    assert duration_of(d) == pytest.approx(3.0)
    src = Catalogue().open(d)
    frames = drain(src)
    assert len(frames) == 150 and src.finished
    full = db = 10 ** (-6 / 20)
    assert peak(frames[100]) == pytest.approx(full, rel=0.02)       # before the fade
    assert peak(frames[125]) == pytest.approx(0.5 * db, rel=0.05)    # half-way down
    assert peak(frames[149]) < 0.03 * db                           # the last frame, ~silent
    # monotonic down across the fade, no step at its start
    peaks = [peak(f) for f in frames[100:150]]
    assert all(b <= a + 1e-6 for a, b in zip(peaks, peaks[1:]))
    assert abs(hz(frames[110:140]) - 800) < 30


def test_a_playlist_shorter_than_its_slot_repeats_until_the_slot_ends_with_a_fade():
    d = PlaylistAudio((ToneAudio(500.0, 1.0, -6.0), ToneAudio(800.0, 0.6, -6.0)), slot_s=5.0,
                      fade_s=1.0)
    assert duration_of(d) == pytest.approx(5.0)
    src = Catalogue().open(d)
    frames = drain(src)
    assert len(frames) == 250 and src.finished    # 5 s, not the items' 1.6 s
    # rounds: 500 Hz 0-1.0 s, 800 Hz 1.0-1.6, 500 Hz 1.6-2.6, 800 Hz 2.6-3.2, 500 Hz 3.2-4.2
    assert abs(hz(frames[85:125]) - 500) < 30
    assert abs(hz(frames[132:158]) - 800) < 30
    assert abs(hz(frames[165:195]) - 500) < 30
    full = 10 ** (-6 / 20)
    assert peak(frames[195]) == pytest.approx(full, rel=0.02)       # before the fade
    assert peak(frames[249]) < 0.03 * full                          # faded out at the end
    peaks = [peak(f) for f in frames[200:250]]
    assert all(b <= a + 1e-6 for a, b in zip(peaks, peaks[1:]))


def test_without_a_slot_a_playlist_plays_once():
    d = PlaylistAudio((ToneAudio(500.0, 1.0),))
    assert duration_of(d) == pytest.approx(1.0)
    assert len(drain(Catalogue().open(d))) == 50


def test_joined_in_a_later_round_it_lands_in_the_right_item():
    d = PlaylistAudio((ToneAudio(500.0, 1.0), ToneAudio(800.0, 0.6)), slot_s=6.0, fade_s=0.2)
    src = Catalogue().open(d, start_s=4.0)       # round 3 (3.2 s), 0.8 s into the 500 Hz item
    assert src.position_s == pytest.approx(4.0)
    frames = drain(src)
    assert len(frames) == 100                    # 2 s left of the slot
    assert abs(hz(frames[:10]) - 500) < 60
    assert abs(hz(frames[12:40]) - 800) < 30     # 4.2-4.8 s
    assert abs(hz(frames[42:85]) - 500) < 30     # the next round
    assert src.position_s == pytest.approx(6.0)


def test_a_round_that_plays_nothing_ends_the_loop():
    src = Catalogue().open(PlaylistAudio((SilenceAudio(0.0),), slot_s=30.0))
    assert drain(src, limit=10) == [] and src.finished


def test_joined_in_progress_it_lands_in_the_right_item_and_ends_on_the_slot():
    d = PlaylistAudio((ToneAudio(500.0, 2.0), ToneAudio(800.0, 10.0)), slot_s=5.0, fade_s=0.5)
    src = Catalogue().open(d, start_s=3.0)
    assert src.position_s == pytest.approx(3.0)
    frames = drain(src)
    assert len(frames) == 100                  # 5 s slot - 3 s joined = 2 s left
    assert abs(hz(frames[:50]) - 800) < 30
    assert src.position_s == pytest.approx(5.0)


def test_the_fade_reuses_its_buffers():
    d = PlaylistAudio((SilenceAudio(1.0), ToneAudio(500.0, 5.0)), slot_s=3.0, fade_s=2.0)
    src = Catalogue().open(d)
    src.start()
    faded = []
    for i in range(150):
        f = src.read()
        assert f is not None
        if i >= 50:
            faded.append(f)
    a, b = src._bufs
    # two preallocated buffers used in turn: no new array per faded frame, and the frame
    # handed out on the previous tick is not overwritten by this one
    assert all(f is (a if k % 2 == 0 else b) for k, f in enumerate(faded))


@pytest.mark.parametrize("bad", [PlaylistAudio(()), PlaylistAudio((LiveAudio("in-x"),)),
                                 PlaylistAudio((RelayAudio("http://a/b"),)),
                                 PlaylistAudio((PlaylistAudio((ToneAudio(),)),))])
def test_bad_playlists_are_refused(bad):
    with pytest.raises(MediaError):
        Catalogue().factory(bad)
