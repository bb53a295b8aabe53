"""What a text must be before it may air, and the bridge to the Vietnamese normaliser.

`check_text` refuses, with a code and a message naming the problem: an empty text, one over the
configured limit, control characters, and letters of a script espeak-ng's Vietnamese voices
cannot read (CJK, Thai, Arabic, Cyrillic...: they would be skipped or spelled out, and a
bulletin would air half-read). Pure functions.
"""
from __future__ import annotations

import unicodedata

from streamer.ingest.base import MediaError
# the Vietnamese normaliser (numbers, dates, units, abbreviations): its own module
from streamer.tts.normalize import normalize as _normalize
from streamer.tts.normalize import sentences as _sentences

__all__ = ["TextError", "TextRefused", "check_text", "normalize", "sentences", "MAX_CHARS"]

MAX_CHARS = 20_000
#: white space an official may paste (tabs, line and paragraph breaks)
_ALLOWED_CONTROLS = frozenset("\t\n\r\u2028\u2029\u0085")
#: invisible format characters pasted from word processors: dropped, not refused
_DROPPED = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")


class TextError(ValueError):
    """A text that cannot be read aloud: `code` for programs, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TextRefused(MediaError):
    """A TextError where the engine expects a MediaError (the catalogue): its code goes along,
    so a refused broadcast names the problem (`unknown_voice`, `text_too_long`...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else f"U+{ord(ch):04X}"


def clean_text(text: str) -> str:
    """The text without the invisible format characters word processors leave."""
    return "".join(ch for ch in text if ch not in _DROPPED)


def check_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """The text, cleaned, or TextError naming what is wrong with it."""
    if not isinstance(text, str):
        raise TextError("invalid_text", "the text must be a string")
    text = clean_text(unicodedata.normalize("NFC", text))
    if not text.strip():
        raise TextError("empty_text", "the text is empty: there is nothing to read")
    if len(text) > max_chars:
        raise TextError("text_too_long", f"the text has {len(text):,} characters; at most "
                        f"{max_chars:,} may be read in one item")
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Co", "Cn", "Cf") and ch not in _ALLOWED_CONTROLS:
            raise TextError("control_characters",
                            f"the text contains a control character U+{ord(ch):04X} at "
                            f"position {i + 1}")
    foreign = sorted({_script(ch) for ch in text
                      if unicodedata.category(ch).startswith("L") and _script(ch) != "LATIN"})
    if foreign:
        raise TextError("unreadable_script",
                        "the text contains letters the Vietnamese voices cannot read "
                        f"({', '.join(foreign[:5])} script); write it in Vietnamese")
    return text


def normalize(text: str) -> str:
    """The words that will be spoken, on one line."""
    return str(_normalize(text))


def sentences(text: str) -> list[str]:
    """The text as normalised sentences, in order: the unit of synthesis and of resume."""
    out: list[str] = []
    for s in _sentences(text):
        words = str(_normalize(s)).strip()
        if words and any(ch.isalnum() for ch in words):
            out.append(words)
    return out
