"""streamer/ingest/catalogue.py and text: a refused text keeps its code on the way out of the
catalogue; a playlist (a zone's language variants) learns a text's length as it is rendered, so
a resume after the text lands in the right item at the right place; a playlist or programme
joined in progress measures the texts before its offset first (rendering only what it needs).
No real synthesis here: the text's timeline is filled by hand, as the source fills it when
sentences are rendered, or a fake engine renders 0.1 s of audio per character."""
import math

import numpy as np
import pytest

from streamer.audio import FRAME_MS, FRAME_SAMPLES
from streamer.ingest.base import MediaError
from streamer.ingest.catalogue import Catalogue, attention_part, duration_of
from streamer.mixer.arbitration import Level
from streamer.port import PlaylistAudio, Programme, ToneAudio, TtsAudio
from streamer.tts.engines import TtsError
from streamer.tts.service import TtsService


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
    # a start at 3 s before the text is rendered: placed when it starts, after the text is
    # measured (SequenceSource.place: tests below with an engine that renders)
    assert not make(3.0)._placed
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
    # a start 4 s into the text, before it is rendered: placed after the text is measured
    assert not make(chime + 4.0)._placed
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


class FakeEngine:
    """0.1 s of audio per character of a sentence; counts what it renders."""
    name = "fake"
    kind = "cloud"
    voices = ("vi",)
    default_voice = "vi"

    def __init__(self, fail: bool = False) -> None:
        self.rendered: list[str] = []
        self.fail = fail

    def synthesize(self, sentence, voice, rate, deadline_s=None):
        if self.fail:
            raise TtsError("the engine is down")
        self.rendered.append(sentence)
        yield np.full(int(0.1 * len(sentence) * 48_000), 0.05, np.float32)


TEXT = "Một hai ba. Bốn năm sáu bảy tám. Chín mười."


def fake_catalogue(fail: bool = False):
    engine = FakeEngine(fail)
    svc = TtsService([engine], default_engine="fake", loudness_target=None)
    sentences = svc.prepare(TEXT).sentences
    lengths = [max(1, -(-int(0.1 * len(x) * 48_000) // FRAME_SAMPLES)) * FRAME_MS / 1000
               for x in sentences]
    return Catalogue(tts=svc), engine, list(sentences), lengths


def test_a_playlist_joined_after_a_text_never_rendered_lands_in_the_right_item():
    cat, engine, sentences, lengths = fake_catalogue()
    text_s = sum(lengths)
    make = cat.factory(PlaylistAudio((ToneAudio(500.0, 2.0), TtsAudio(TEXT),
                                      ToneAudio(800.0, 30.0))))
    src = make(2.0 + text_s + 1.5)
    src.place()    # what start() does first, off the tick
    assert src._index == 2 and src._offset == pytest.approx(1.5)
    assert engine.rendered == sentences          # each sentence once
    assert src.parts[1].duration_s == pytest.approx(text_s)
    # the text's length is now known to the factory: a later start needs no rendering
    again = make(2.0 + text_s + 4.0)
    assert again._placed and again._index == 2 and engine.rendered == sentences


def test_joined_inside_a_text_it_renders_only_up_to_the_offset_and_starts_at_its_sentence():
    cat, engine, sentences, lengths = fake_catalogue()
    cat.resume_rewind_s = 0.0   # a join is exact (a resume's rewind is mapped back by the text)
    d = PlaylistAudio((ToneAudio(500.0, 2.0), TtsAudio(TEXT), ToneAudio(800.0, 30.0)))
    src = cat.open(d, start_s=2.0 + lengths[0] + 0.5)
    src.place()
    assert src._index == 1 and src._offset == pytest.approx(lengths[0] + 0.5)
    assert engine.rendered == sentences[:2]      # not the third sentence
    text = src.parts[1].factory(src._offset)      # the text's own source, not started
    assert text.start_index == 1


def test_a_resume_inside_a_text_already_rendered_renders_nothing():
    cat, engine, sentences, lengths = fake_catalogue()
    make = cat.factory(PlaylistAudio((TtsAudio(TEXT), ToneAudio(800.0, 30.0))))
    first = make(0.0)
    frames = [round(x * 1000 / FRAME_MS) for x in lengths]
    first.parts[0].factory(0.0).timeline.frames[:2] = frames[:2]   # read up to sentence 2
    src = make(lengths[0] + 0.3)
    src.place()
    assert src._index == 0 and engine.rendered == []


def test_a_looping_slot_playlist_with_a_text_is_joined_in_the_right_round():
    cat, engine, sentences, lengths = fake_catalogue()
    text_s = sum(lengths)
    d = PlaylistAudio((TtsAudio(TEXT), ToneAudio(800.0, 2.0)), slot_s=600.0)
    round_s = text_s + 2.0
    src = cat.open(d, start_s=3 * round_s + text_s + 0.5)
    src.inner.place()
    assert src.inner._index == 1 and src.inner._offset == pytest.approx(0.5, abs=1e-6)
    assert engine.rendered == sentences


def test_a_programme_joined_in_its_second_repeat_measures_its_text():
    cat, engine, sentences, lengths = fake_catalogue()
    text_s = sum(lengths)
    d = Programme(TtsAudio(TEXT), attention=None, repeat=3, repeat_pause_s=2.0)
    src = cat.open(d, start_s=text_s + 2.0 + 1.0)
    src.place()
    assert src.part_label == "message 2" and src._offset == pytest.approx(1.0)


def test_an_engine_that_fails_to_measure_leaves_the_start_in_the_text():
    cat, engine, sentences, lengths = fake_catalogue(fail=True)
    src = cat.open(PlaylistAudio((ToneAudio(500.0, 2.0), TtsAudio(TEXT), ToneAudio())),
                   start_s=60.0)
    src.place()
    assert src._index == 1


def test_a_start_before_the_first_text_renders_nothing():
    cat, engine, sentences, lengths = fake_catalogue()
    for slot in (None, 600.0):
        src = cat.open(PlaylistAudio((ToneAudio(500.0, 10.0), TtsAudio(TEXT)), slot_s=slot),
                       start_s=3.0)
        seq = src if slot is None else src.inner
        assert seq._placed and seq._index == 0 and seq._offset == pytest.approx(3.0)
    assert engine.rendered == []
