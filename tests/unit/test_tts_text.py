"""streamer.tts.text: what a text must be before it may air."""
from __future__ import annotations

import pytest

from streamer.tts.text import TextError, check_text


@pytest.mark.parametrize("text,code", [
    ("", "empty_text"), ("   \n\t ", "empty_text"),
    ("x" * 101, "text_too_long"),
    ("Thông báo\x00", "control_characters"), ("a\x1bb", "control_characters"),
    ("a\x07", "control_characters"), ("\u202eabc", "control_characters"),
    ("Thông báo 台风 số 3", "unreadable_script"), ("Bão Яги", "unreadable_script"),
    ("ข่าว", "unreadable_script"), ("خبر", "unreadable_script"),
])
def test_refused_with_a_code(text: str, code: str) -> None:
    with pytest.raises(TextError) as e:
        check_text(text, max_chars=100)
    assert e.value.code == code
    assert e.value.message


@pytest.mark.parametrize("text", [
    "Thông báo của UBND xã Ia Grai: bão số 3, gió cấp XII, 118-133 km/h.",
    "Đề nghị bà con\r\ndi dời trước 17h30 ngày 07/07/2022!\tXin cảm ơn.",
    "Nhiệt độ 25°C, lượng mưa 150 mm (≈ 6%); liên hệ 0912 345 678.",
    "x" * 100,
])
def test_accepted(text: str) -> None:
    assert check_text(text, max_chars=100).strip()


def test_invisible_format_characters_are_dropped_not_refused() -> None:
    assert check_text("xin\u200b chào\ufeff") == "xin chào"


def test_decomposed_vietnamese_is_composed() -> None:
    assert check_text("Vie\u0302\u0323t Nam") == "Việt Nam"
