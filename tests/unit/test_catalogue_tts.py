"""streamer/ingest/catalogue.py and text: a refused text keeps its code on the way out of the
catalogue; a playlist (a zone's language variants) learns a text's length as it is rendered, so
a resume after the text lands in the right item at the right place. No synthesis here: the
text's timeline is filled by hand, as the source fills it when sentences are rendered."""
import math

import pytest

from streamer.ingest.base import MediaError
from streamer.ingest.catalogue import Catalogue, attention_part, duration_of
from streamer.mixer.arbitration import Level
from streamer.port import PlaylistAudio, Programme, ToneAudio, TtsAudio


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


def test_a_programme_learns_its_texts_length_and_resumes_in_the_right_repeat_and_sentence():
    """An alert read aloud with its attention signal, three times with 2 s pauses: a resume
    after the text is rendered lands in the repeat it was cut in, at the start of the sentence
    that holds the cut (the core reopens `resume_rewind_s` before the cut; the text's source
    maps that back); before, it never skips past the text."""
    cat = Catalogue()
    desc = Programme(TtsAudio("Câu một. Câu hai."), attention="chime", repeat=3,
                     repeat_pause_s=2.0)
    assert duration_of(desc) is None          # a text's length is not known before rendering
    make = cat.factory(desc, priority=int(Level.EMERGENCY))
    chime = attention_part("chime").duration_s
    first = make(0.0)
    assert [p.duration_s for p in first.parts] == [pytest.approx(chime), math.inf, 2.0,
                                                   math.inf, 2.0, math.inf]
    # a resume 4 s into the text, before it is rendered: inside repeat 1, not past it
    assert make(chime + 4.0)._index == 1
    # the source renders its two sentences: 3.0 s and 3.2 s (one timeline for every repeat)
    first.parts[1].factory(0.0).timeline.frames[:] = [150, 160]
    hint = cat.resume_rewind_s
    for k in range(3):
        start = chime + k * (6.2 + 2.0)
        for cut, sentence in ((start + 2.5, 0), (start + 4.0, 1), (start + 6.1, 1)):
            again = make(cut - hint)
            assert again._index == 1 + 2 * k, (k, cut)
            src = again.parts[again._index].factory(again._offset)
            assert src.start_index == sentence, (k, cut)
            assert again.part_label == f"message {k + 1}"
