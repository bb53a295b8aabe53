"""streamer/ingest/catalogue.py and text: a refused text keeps its code on the way out of the
catalogue; a playlist (a zone's language variants) learns a text's length as it is rendered, so
a resume after the text lands in the right item at the right place. No synthesis here: the
text's timeline is filled by hand, as the source fills it when sentences are rendered."""
import math

import pytest

from streamer.ingest.base import MediaError
from streamer.ingest.catalogue import Catalogue
from streamer.port import PlaylistAudio, ToneAudio, TtsAudio


@pytest.mark.parametrize("desc,code", [
    (TtsAudio(""), "empty_text"),
    (TtsAudio("Bão 台风"), "unreadable_script"),
    (TtsAudio("Xin\x07 chào"), "control_characters"),
    (TtsAudio("Xin chào", voice="nobody"), "unknown_voice"),
    (TtsAudio("Xin chào", engine="nope"), "unknown_engine"),
    (TtsAudio("x" * 20_001), "text_too_long"),
])
def test_a_refused_text_keeps_its_code(desc, code):
    for d in (desc, PlaylistAudio((ToneAudio(), desc))):
        with pytest.raises(MediaError) as e:
            Catalogue().factory(d)
        assert getattr(e.value, "code", None) == code


def test_a_playlist_learns_a_texts_length_and_resumes_after_it():
    make = Catalogue().factory(PlaylistAudio((TtsAudio("Câu một. Câu hai."),
                                             ToneAudio(seconds=4.0))))
    first = make(0.0)
    assert [p.duration_s for p in first.parts] == [math.inf, 4.0]
    # a resume at 3 s before the text is rendered: inside the text (its timeline finds where)
    assert make(3.0)._index == 0
    # the source renders its two sentences: 1.0 s and 1.2 s
    tts = first.parts[0].factory(0.0)
    tts.timeline.frames[:] = [50, 60]
    again = make(3.0)
    assert [p.duration_s for p in again.parts] == [pytest.approx(2.2), 4.0]
    assert again._index == 1 and again._offset == pytest.approx(0.8)
