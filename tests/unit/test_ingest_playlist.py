"""Playlists (streamer/ingest/playlist.py through the catalogue): items in order, a slot cut
at its end with a linear fade, a playlist joined in progress landing in the right item and
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


def test_a_short_playlist_ends_before_its_slot():
    d = PlaylistAudio((ToneAudio(500.0, 1.0),), slot_s=60.0)
    assert duration_of(d) == pytest.approx(1.0)
    assert len(drain(Catalogue().open(d))) == 50


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
