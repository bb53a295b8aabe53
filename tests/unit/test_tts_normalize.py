"""streamer.tts.normalize: the Vietnamese normalisation table, sentence splitting, robustness."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.tts_normalize import TABLE, key, load_cases
from streamer.tts.normalize import (
    MAX_SENTENCE_CHARS,
    number_words,
    read_number,
    roman_value,
    sentences,
    spoken_sentences,
)
from streamer.tts.normalize import normalize as norm

CASES = load_cases(TABLE)


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 100
    assert len({t for t, _ in CASES}) == len(CASES)        # no case twice


@pytest.mark.parametrize("text,expected", CASES, ids=[t[:40] for t, _ in CASES])
def test_table(text: str, expected: str) -> None:
    assert key(norm(text)) == key(expected)


# --- numbers: checked against an independent reader of the words -----------------------------

_D = {"không": 0, "một": 1, "mốt": 1, "hai": 2, "ba": 3, "bốn": 4, "tư": 4, "năm": 5, "lăm": 5,
      "sáu": 6, "bảy": 7, "tám": 8, "chín": 9}


def _small(words: list[str]) -> int:
    total, pending = 0, 0
    for w in words:
        if w in _D:
            pending = _D[w]
        elif w == "mười":
            total += 10
        elif w == "mươi":
            total, pending = total + pending * 10, 0
        elif w == "trăm":
            total, pending = total + pending * 100, 0
        elif w != "linh":
            raise AssertionError(f"unexpected word {w!r}")
    return total + pending


def words_value(words: list[str]) -> int:
    for scale, size in (("tỷ", 10**9), ("triệu", 10**6), ("nghìn", 1000)):
        if scale in words:
            i = len(words) - 1 - words[::-1].index(scale)
            return words_value(words[:i]) * size + (words_value(words[i + 1:]) if words[i + 1:] else 0)
    return _small(words)


@given(st.integers(min_value=0, max_value=10**15 - 1))
def test_number_words_read_back(n: int) -> None:
    words = number_words(n).split()
    assert words_value(words) == n
    # the forms Vietnamese uses: "mốt" and "tư" only after "mươi", "lăm" only after mười/mươi,
    # "linh" only after "trăm"
    for prev, w in zip(["^"] + words, words):
        if w in ("mốt", "tư"):
            assert prev == "mươi"
        if w == "lăm":
            assert prev in ("mười", "mươi")
        if w == "linh":
            assert prev == "trăm"


@pytest.mark.parametrize("n,words", [
    (0, "không"), (5, "năm"), (10, "mười"), (15, "mười lăm"), (41, "bốn mươi mốt"),
    (44, "bốn mươi tư"), (101, "một trăm linh một"), (1_000_005, "một triệu không trăm linh năm"),
    (2_000_000_000, "hai tỷ"), (1_000_000_000_000, "một nghìn tỷ"),
    (3_050_000_000, "ba tỷ không trăm năm mươi triệu"),
])
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


@pytest.mark.parametrize("written,words", [
    ("0,05", "không phẩy không năm"), ("3,125", "ba phẩy một hai năm"), ("007", "không không bảy"),
    ("1.5", "một phẩy năm"), ("-3", "âm ba"), ("9.999.999", "chín triệu chín trăm chín mươi chín "
     "nghìn chín trăm chín mươi chín"),
])
def test_read_number(written: str, words: str) -> None:
    assert read_number(written) == words


@pytest.mark.parametrize("roman,value", [("I", 1), ("IV", 4), ("IX", 9), ("XII", 12), ("XIV", 14),
                                         ("XL", 40), ("MCMXC", 1990), ("IIII", None), ("", None)])
def test_roman_value(roman: str, value: int | None) -> None:
    assert roman_value(roman) == value


@pytest.mark.parametrize("text,words", [
    ("số 12 thứ 12", "số mười hai thứ mười hai"),
    ("cấp I", "cấp một"),                       # a Roman numeral after its trigger word
    ("Đội I và đội V", "đội i và đội v"),         # not after one: letters stay letters
    ("0905 123 45", "không chín không năm, một hai ba, bốn năm"),   # 9 digits: still a phone
    ("12 345", "mười hai ba trăm bốn mươi lăm"),  # not a phone (no leading zero)
    ("ngày 32/13", "ngày ba mươi hai trên mười ba"),  # not a date
    ("5h99", "năm giờ chín mươi chín"),
])
def test_edges(text: str, words: str) -> None:
    assert key(norm(text)) == key(words)


def test_one_line_with_sentence_ends_kept() -> None:
    out = norm("THÔNG BÁO\nBão số 3 đổ bộ! Sơ tán ngay.\n\n")
    assert out == "thông báo. Bão số ba đổ bộ! Sơ tán ngay."


# --- sentences ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Bão số 3 đổ bộ. Sơ tán ngay!", ["Bão số 3 đổ bộ.", "Sơ tán ngay!"]),
    ("TP. Đà Nẵng có mưa 13,8 mm. Hết.", ["TP. Đà Nẵng có mưa 13,8 mm.", "Hết."]),
    ("Ngày 07.07.2022 lũ lên; xã sơ tán 1.250 hộ.", ["Ngày 07.07.2022 lũ lên;", "xã sơ tán 1.250 hộ."]),
    ("TX. Điện Bàn, TT. Ái Nghĩa. Hết", ["TX. Điện Bàn, TT. Ái Nghĩa.", "Hết"]),
    ("PGS.TS. Nguyễn V. An phát biểu. Xong", ["PGS.TS. Nguyễn V. An phát biểu.", "Xong"]),
    ("Có thật không? Có… Hết", ["Có thật không?", "Có…", "Hết"]),
    ("Dòng một\nDòng hai\r\n\nDòng ba", ["Dòng một", "Dòng hai", "Dòng ba"]),
    ("Ông nói: \"Sơ tán ngay.\" Rồi đi.", ["Ông nói: \"Sơ tán ngay.\"", "Rồi đi."]),
    ("gạo, muối, nước v.v. cần mang theo", ["gạo, muối, nước v.v. cần mang theo"]),
    ("gạo, muối v.v. Sau đó", ["gạo, muối v.v.", "Sau đó"]),
    ("lúc 17h30. Mưa 1,5m.", ["lúc 17h30.", "Mưa 1,5m."]),
    ("...", []), ("", []), (" \n ", []),
])
def test_sentences(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_a_long_sentence_is_cut_at_commas() -> None:
    text = ", ".join(f"xã số {i} sơ tán khẩn cấp" for i in range(60)) + "."
    parts = sentences(text)
    assert len(parts) > 1
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in parts)
    assert all(p.endswith((",", ".")) for p in parts)
    assert " ".join(parts) == text


def test_spoken_sentences() -> None:
    assert spoken_sentences("UBND xã thông báo. Bão số 3!") == ["Ủy ban nhân dân xã thông báo.",
                                                                "Bão số ba!"]


# --- robustness --------------------------------------------------------------------------------

_BULLETINISH = st.text(alphabet=st.sampled_from(list("0123456789.,/-–:;h%°CNEkmgsa³²&()+>' \nIVXUBNDĐTPcấpsốthứ")),
                       max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), _BULLETINISH))
def test_any_text_reads_without_digits(text: str) -> None:
    out = norm(text)
    assert "\n" not in out and "\r" not in out
    assert not any(c.isdigit() for c in out), out
    for s in sentences(text):
        assert s.strip() == s and s
        assert not any(c.isdigit() for c in norm(s))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([c for c, _ in CASES]), min_size=1, max_size=6))
def test_sentences_keep_every_word(parts: list[str]) -> None:
    text = " ".join(p if p.endswith(".") else p + "." for p in parts)
    assert " ".join(sentences(text)).split() == text.split()


# --- the command ------------------------------------------------------------------------------

def test_loa_tts_normalize_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from control.cli import main
    assert main(["tts", "normalize", "UBND xã: bão số 3.\nGió cấp XII."]) == 0
    assert capsys.readouterr().out == "Ủy ban nhân dân xã: bão số ba. Gió cấp mười hai.\n"
    assert main(["tts"]) == 2


def test_loa_tts_normalize_reads_stdin(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from control.cli import main
    monkeypatch.setattr("sys.stdin", io.StringIO("Lúc 17h30. Mưa 13,8 mm\n"))
    assert main(["tts", "normalize", "--sentences"]) == 0
    assert capsys.readouterr().out.splitlines() == ["Lúc mười bảy giờ ba mươi phút.",
                                                    "Mưa mười ba phẩy tám mi li mét"]
