"""Vietnamese text normalisation for speech: written bulletin text in, the words an announcer
reads out. Pure code, no IO.

- `normalize(text)` -> one line of words: numbers (`.` thousands, `,` decimals), dates, times,
  ranges, units, Roman numerals and ordinals where Vietnamese uses them, phone numbers digit by
  digit, coordinates, and the abbreviations of public administration and disaster work. Sentence
  punctuation is kept (it gives the engine its pauses); no digit is left in the output.
- `sentences(text)` -> the raw text cut into sentences (on . ! ? ; … and line ends, never inside a
  number, a date or after an abbreviation such as "TP."), each the unit a speech engine
  synthesises and a resumed item restarts from. `spoken_sentences(text)` normalises each.

Written here (not taken from PyPI): on the table in tests/unit/data/vi_normalize_cases.tsv the
registry's packages get the public-administration and storm-warning cases wrong (see
bench/tts_normalize.py and the README for the scores).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

__all__ = ["normalize", "sentences", "spoken_sentences", "number_words", "digits_words",
           "MAX_SENTENCE_CHARS"]

# a sentence longer than this is cut at a comma (else a space) so the first audio comes early
MAX_SENTENCE_CHARS = 300

_DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")


def _three(n: int, full: bool) -> list[str]:
    """0 < n < 1000; `full` reads the hundreds and 'linh' even when they are zero (a group after
    a larger one: 2.005 -> hai nghìn không trăm linh năm)."""
    h, t, u = n // 100, n // 10 % 10, n % 10
    out: list[str] = []
    if h or full:
        out += [_DIGITS[h], "trăm"]
    if t == 0:
        if u:
            if h or full:
                out.append("linh")
            out.append(_DIGITS[u])
    elif t == 1:
        out.append("mười")
        if u:
            out.append("lăm" if u == 5 else _DIGITS[u])
    else:
        out += [_DIGITS[t], "mươi"]
        if u:
            out.append({1: "mốt", 4: "tư", 5: "lăm"}.get(u, _DIGITS[u]))
    return out


def _below_billion(n: int, full: bool) -> list[str]:
    out: list[str] = []
    for value, name in ((n // 1_000_000, "triệu"), (n // 1000 % 1000, "nghìn"), (n % 1000, "")):
        if value:
            out += _three(value, full)
            if name:
                out.append(name)
            full = True
    return out


def number_words(n: int) -> str:
    """A whole number as words: 105 -> một trăm linh năm, 1250 -> một nghìn hai trăm năm mươi."""
    if n < 0:
        return "âm " + number_words(-n)
    if n == 0:
        return "không"
    if n >= 10**15:
        return digits_words(str(n))
    words: list[str] = []
    billions, rest = divmod(n, 10**9)
    if billions:
        words += number_words(billions).split() + ["tỷ"]
    if rest:
        words += _below_billion(rest, bool(billions))
    return " ".join(words)


def digits_words(digits: str) -> str:
    """Digit by digit: '0905' -> không chín không năm (other characters are dropped)."""
    return " ".join(_DIGITS[unicodedata.digit(c)] for c in digits if c.isdigit())


# --- numbers as written -----------------------------------------------------------------------

# 1.250.000 | 1.250,5 | 13,8 | 105 | 1.5 (a dot that is not a thousands group reads as a decimal)
_NUM = r"\d{1,3}(?:\.\d{3})+(?:,\d+)?|\d+(?:[.,]\d+)?"
_B = r"(?<![\w.,])"          # no word, digit or separator just before
_E = r"(?![\w]|[.,]\d)"     # no word or continued number just after


def _fraction(frac: str) -> str:
    if frac.startswith("0") or len(frac) > 2:
        return digits_words(frac)
    return number_words(int(frac))


def read_number(s: str) -> str:
    """A number as written in Vietnamese text: '1.250' -> một nghìn hai trăm năm mươi,
    '13,8' -> mười ba phẩy tám, '05' -> không năm (a leading zero reads digit by digit)."""
    neg = s.startswith("-")
    s = s.lstrip("-")
    if re.fullmatch(r"\d{1,3}(?:\.\d{3})+(?:,\d+)?", s):
        whole, _, frac = s.partition(",")
        whole = whole.replace(".", "")
    else:
        whole, _, frac = s.replace(".", ",", 1).partition(",")
    if not whole.isdigit():
        return digits_words(s)
    if len(whole) > 2 and whole.startswith("0"):    # a code; "05 người", "04 giờ" read as numbers
        words = digits_words(whole)
    elif len(whole) > 15:
        words = digits_words(whole)
    else:
        words = number_words(int(whole))
    if frac:
        words += " phẩy " + _fraction(frac)
    return ("âm " + words) if neg else words


def _num(s: str) -> str:
    """A number inside a date or a time: leading zeros are not spoken (07 -> bảy)."""
    s = s.lstrip("0") or "0"
    return number_words(int(s))


def _month(m: int) -> str:
    return "tư" if m == 4 else number_words(m)


# --- letters and abbreviations ------------------------------------------------------------------

_LETTERS = {
    "A": "a", "Ă": "á", "Â": "ớ", "B": "bê", "C": "xê", "D": "dê", "Đ": "đê", "E": "e", "Ê": "ê",
    "F": "ép", "G": "giê", "H": "hát", "I": "i", "J": "gi", "K": "ca", "L": "e lờ", "M": "em mờ",
    "N": "en nờ", "O": "o", "Ô": "ô", "Ơ": "ơ", "P": "pê", "Q": "quy", "R": "e rờ", "S": "ét",
    "T": "tê", "U": "u", "Ư": "ư", "V": "vê", "W": "vê kép", "X": "ích", "Y": "i", "Z": "dét",
}


def spell(letters: str) -> str:
    return " ".join(_LETTERS.get(c.upper(), c) for c in letters if c.isalpha())


# Longest first when applied. Keys are matched case-sensitively, as whole tokens.
ABBREVIATIONS: dict[str, str] = {
    # disaster work
    "BCH PCTT & TKCN": "Ban Chỉ huy Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "BCH PCTT&TKCN": "Ban Chỉ huy Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "BCH PCTT-TKCN": "Ban Chỉ huy Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "BCĐ PCTT & TKCN": "Ban Chỉ đạo Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "PCTT & TKCN": "Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "PCTT&TKCN": "Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "PCTT-TKCN": "Phòng chống thiên tai và Tìm kiếm cứu nạn",
    "PCCC & CNCH": "phòng cháy chữa cháy và cứu nạn cứu hộ",
    "PCCC&CNCH": "phòng cháy chữa cháy và cứu nạn cứu hộ",
    "BCH": "Ban Chỉ huy", "BCĐ": "Ban Chỉ đạo", "PCTT": "Phòng chống thiên tai",
    "TKCN": "Tìm kiếm cứu nạn", "CNCH": "cứu nạn cứu hộ", "PCCC": "phòng cháy chữa cháy",
    "KTTV": "Khí tượng Thủy văn", "ATNĐ": "áp thấp nhiệt đới", "XTNĐ": "xoáy thuận nhiệt đới",
    "BĐKH": "biến đổi khí hậu", "BĐBP": "Bộ đội Biên phòng", "BCHQS": "Ban Chỉ huy Quân sự",
    "TTDBKTTVQG": "Trung tâm Dự báo Khí tượng Thủy văn quốc gia",
    "TTDB KTTV": "Trung tâm Dự báo Khí tượng Thủy văn",
    # state and administration
    "CHXHCNVN": "Cộng hòa xã hội chủ nghĩa Việt Nam",
    "CHXHCN": "Cộng hòa xã hội chủ nghĩa",
    "UBMTTQVN": "Ủy ban Mặt trận Tổ quốc Việt Nam", "UBMTTQ": "Ủy ban Mặt trận Tổ quốc",
    "MTTQVN": "Mặt trận Tổ quốc Việt Nam", "MTTQ": "Mặt trận Tổ quốc",
    "UBND": "Ủy ban nhân dân", "HĐND": "Hội đồng nhân dân", "ĐBQH": "đại biểu Quốc hội",
    "BTV": "Ban Thường vụ", "BQL": "Ban Quản lý", "BTC": "Ban Tổ chức", "TTg": "Thủ tướng",
    "TW": "Trung ương", "TƯ": "Trung ương", "T.Ư": "Trung ương", "CP": "Chính phủ",
    "NĐ-CP": "Nghị định Chính phủ", "NĐ": "Nghị định", "QĐ": "Quyết định", "CT": "Chỉ thị",
    "KH": "Kế hoạch", "TB": "Thông báo", "CV": "Công văn", "QH": "Quốc hội",
    "CAND": "Công an nhân dân", "QĐND": "Quân đội nhân dân", "CSGT": "Cảnh sát giao thông",
    "ANTT": "an ninh trật tự", "ATGT": "an toàn giao thông", "ATTP": "an toàn thực phẩm",
    "VSATTP": "vệ sinh an toàn thực phẩm", "KT-XH": "kinh tế xã hội", "QP-AN": "quốc phòng an ninh",
    "HTX": "hợp tác xã", "KCN": "khu công nghiệp", "CNTT": "công nghệ thông tin",
    "GD&ĐT": "Giáo dục và Đào tạo", "GDĐT": "Giáo dục và Đào tạo",
    "NN&PTNT": "Nông nghiệp và Phát triển nông thôn", "NNPTNT": "Nông nghiệp và Phát triển nông thôn",
    "NN&MT": "Nông nghiệp và Môi trường",
    "TN&MT": "Tài nguyên và Môi trường", "TNMT": "Tài nguyên và Môi trường",
    "LĐ-TB&XH": "Lao động Thương binh và Xã hội", "LĐTBXH": "Lao động Thương binh và Xã hội",
    "VH-TT&DL": "Văn hóa Thể thao và Du lịch", "VHTTDL": "Văn hóa Thể thao và Du lịch",
    "GTVT": "Giao thông Vận tải", "BHYT": "bảo hiểm y tế", "BHXH": "bảo hiểm xã hội",
    "THPT": "trung học phổ thông", "THCS": "trung học cơ sở", "TTYT": "Trung tâm Y tế",
    "LHPN": "Liên hiệp Phụ nữ", "HND": "Hội Nông dân", "HCCB": "Hội Cựu chiến binh",
    "CCB": "cựu chiến binh", "ĐTN": "Đoàn Thanh niên", "TNCS": "Thanh niên Cộng sản",
    "CMND": "chứng minh nhân dân", "CCCD": "căn cước công dân",
    "ĐBSCL": "đồng bằng sông Cửu Long", "KV": "khu vực", "QL": "quốc lộ", "ĐT": "điện thoại",
    "SĐT": "số điện thoại", "VN": "Việt Nam", "VNĐ": "đồng", "VND": "đồng", "USD": "đô la Mỹ",
    "TP.HCM": "thành phố Hồ Chí Minh", "TP. HCM": "thành phố Hồ Chí Minh",
    "TPHCM": "thành phố Hồ Chí Minh", "TP HCM": "thành phố Hồ Chí Minh",
    "HCM": "Hồ Chí Minh",
    "PGS.TS.": "phó giáo sư tiến sĩ", "PGS.TS": "phó giáo sư tiến sĩ", "PGS.": "phó giáo sư",
    "GS.": "giáo sư", "TS.": "tiến sĩ", "ThS.": "thạc sĩ", "BS.": "bác sĩ",
    "TP.": "thành phố", "Tp.": "thành phố", "TP": "thành phố", "Tp": "thành phố",
    "TX.": "thị xã", "TX": "thị xã", "TT.": "thị trấn",
    "Đ/c": "đồng chí", "đ/c": "đồng chí", "v.v.": "vân vân", "v.v": "vân vân",
    "Covid": "Cô vít", "COVID": "Cô vít", "Km": "ki lô mét", "KM": "ki lô mét",
}

# dotted abbreviations after which a "." does not end a sentence
_NO_STOP = {k[:-1] for k in ABBREVIATIONS if k.endswith(".") and k != "v.v."} | {
    "TP", "Tp", "TX", "TT", "GS", "TS", "ThS", "PGS", "BS", "Q", "P", "H", "X", "St", "Th",
    "ông", "bà", "Ô", "B"}

_ABBR_RE = re.compile(
    r"(?<![\w.&])(" + "|".join(re.escape(k) for k in sorted(ABBREVIATIONS, key=len, reverse=True))
    + r")(?![^\W\d]|&|\.\w)")

_VOWELS = set("AĂÂEÊIOÔƠUƯYÁÀẢÃẠẮẰẲẴẶẤẦẨẪẬÉÈẺẼẸẾỀỂỄỆÍÌỈĨỊÓÒỎÕỌỐỒỔỖỘỚỜỞỠỢÚÙỦŨỤỨỪỬỮỰÝỲỶỸỴ")


def _expand(m: re.Match[str]) -> str:
    words = ABBREVIATIONS[m.group(1)]
    return words + " " if m.string[m.end():m.end() + 1].isdigit() else words


def _acronym(m: re.Match[str]) -> str:
    tok = m.group(0)
    if not tok.isupper():
        return tok
    if any(c in _VOWELS for c in tok) or len(tok) > 8:
        return tok.lower()      # an upper-case word (a heading), not an acronym
    return spell(tok)


_ROMAN_RE = re.compile(r"M{0,3}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})")
_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}


def roman_value(s: str) -> int | None:
    if not s or not _ROMAN_RE.fullmatch(s):
        return None
    total = 0
    for a, b in zip(s, s[1:] + " "):
        v = _ROMAN[a]
        total += -v if b != " " and _ROMAN[b] > v else v
    return total


def _ordinal(n: int) -> str:
    return {1: "nhất", 4: "tư"}.get(n, number_words(n))


# --- units ----------------------------------------------------------------------------------

UNITS: dict[str, str] = {
    "km/h": "ki lô mét trên giờ", "km/giờ": "ki lô mét trên giờ", "m/s": "mét trên giây",
    "m3/s": "mét khối trên giây", "m³/s": "mét khối trên giây", "mm/24h": "mi li mét trên hai mươi tư giờ",
    "mm/24 giờ": "mi li mét trên hai mươi tư giờ",
    "mm/h": "mi li mét trên giờ", "km2": "ki lô mét vuông", "km²": "ki lô mét vuông",
    "km": "ki lô mét", "mm": "mi li mét", "cm": "xăng ti mét", "m2": "mét vuông", "m²": "mét vuông",
    "m3": "mét khối", "m³": "mét khối", "m": "mét", "ha": "héc ta", "kg": "ki lô gam",
    "g": "gam", "l": "lít", "ml": "mi li lít", "°C": "độ xê", "oC": "độ xê", "độC": "độ xê",
    "°": "độ", "%": "phần trăm", "hPa": "héc tô pát xcan", "mb": "mi li ba", "kW": "ki lô oát",
    "MW": "mê ga oát", "kWh": "ki lô oát giờ", "kV": "ki lô vôn", "đ": "đồng", "VNĐ": "đồng",
    "VND": "đồng", "USD": "đô la Mỹ", "h": "giờ", "ng": "người", "t": "tấn", "ms": "mi li giây",
}
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_UNIT_END = r"(?![\w³²])"

_COMPASS = {"N": "vĩ bắc", "S": "vĩ nam", "E": "kinh đông", "Đ": "kinh đông", "W": "kinh tây",
            "B": "vĩ bắc", "T": "kinh tây"}


# --- the passes ---------------------------------------------------------------------------

_Sub = Callable[[re.Match[str]], str]
_PASSES: list[tuple[re.Pattern[str], _Sub]] = []


def _pass(pattern: str, flags: int = 0) -> Callable[[_Sub], _Sub]:
    def register(fn: _Sub) -> _Sub:
        _PASSES.append((re.compile(pattern, flags), fn))
        return fn
    return register


def _w(*parts: str) -> str:
    return " " + " ".join(p for p in parts if p) + " "


@_pass(r"(?<![^\W\d]|/)(mm/24h|mm/24 giờ|km/h|km/giờ|m3/s|m³/s|m/s|mm/h|°C)(?![\w/])")
def _bare_unit(m: re.Match[str]) -> str:
    return _w(UNITS[m.group(1)])


_CALL = r"(?:gọi(?:\s+số)?|gọi\s+điện(?:\s+thoại)?(?:\s+số)?|tổng\s+đài|đường\s+dây\s+nóng|hotline|" \
        r"Hotline|điện\s+thoại(?:\s+số)?|Điện\s+thoại(?:\s+số)?|ĐT|SĐT|Tel|Fax|fax)"


@_pass(r"(?i:" + _CALL + r")(\s*:?\s*)(\(?\d[\d .()-]*\d\)?|\d)(?![\w,]|[.,]\d)")
def _called_number(m: re.Match[str]) -> str:
    # a number after "gọi", "tổng đài", "đường dây nóng", "điện thoại": digit by digit
    head = m.group(0)[: m.start(1) - m.start(0)]
    groups = [g for g in re.split(r"[ .()-]+", m.group(2)) if g]
    return head + m.group(1) + ", ".join(digits_words(g) for g in groups) + " "


# 113 (police), 114 (fire), 115 (ambulance) after what they call
@_pass(r"(?i:(cấp\s+cứu|cứu\s+thương|cứu\s+hỏa|cứu\s+hoả|chữa\s+cháy|công\s+an|cảnh\s+sát|cứu\s+nạn|"
       r"khẩn\s+cấp)\s*:?\s*)(11[1-5])(?![\w]|[.,]\d)")
def _emergency_number(m: re.Match[str]) -> str:
    return m.group(0)[: m.start(2) - m.start(0)] + digits_words(m.group(2)) + " "


@_pass(_B + r"(\(?0\d{2,4}\)?(?:[ .-]?\d{2,4}){1,3})" + r"(?![\w,]|[.,]\d)")
def _phone(m: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", m.group(1))
    if not 9 <= len(digits) <= 11:
        return m.group(0)
    groups = [g for g in re.split(r"[ .()-]+", m.group(1)) if g]
    return _w(", ".join(digits_words(g) for g in groups))


@_pass(_B + r"(1[89]00)[ .]?(\d{2,4})(?:[ .]?(\d{2,4}))?(?![\w,]|[.,]\d)")
def _hotline(m: re.Match[str]) -> str:
    return _w(", ".join(digits_words(g) for g in m.groups() if g))


@_pass(_B + r"(1[89]00)(x+|X+)(?!\w)")
def _hotline_pattern(m: re.Match[str]) -> str:
    return _w(digits_words(m.group(1)), m.group(2))


def _valid_date(d: int, mo: int) -> bool:
    return 1 <= d <= 31 and 1 <= mo <= 12


# 20-25/11, từ ngày 20 - 25/11/2022
@_pass(r"(?i:(?:từ\s+)?(?:ngày\s+)?)" + _B + r"(\d{1,2})\s*[-–—]\s*(\d{1,2})[/.-](\d{1,2})(?:[/.-](\d{4}))?"
       r"(?![\w/]|[.,]\d)")
def _date_range(m: re.Match[str]) -> str:
    d1, d2, mo = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (_valid_date(d1, mo) and _valid_date(d2, mo)):
        return m.group(0)
    year = "năm " + number_words(int(m.group(4))) if m.group(4) else ""
    return _w("từ ngày", _num(m.group(1)), "đến ngày", _num(m.group(2)), "tháng", _month(mo), year)


# 07/07/2022, ngày 7-7-2022, 07.07.2022, 26/11
@_pass(r"(?i:(ngày|mồng|mùng|đêm|sáng|chiều|tối|trưa)\s+)?" + _B
       + r"(\d{1,2})([/.-])(\d{1,2})(?:\3(\d{4}))?(?![\w/]|[.,]\d)")
def _date(m: re.Match[str]) -> str:
    d, mo = int(m.group(2)), int(m.group(4))
    sep, year = m.group(3), m.group(5)
    if not _valid_date(d, mo) or (sep != "/" and not year):
        return m.group(0)
    if m.group(0).startswith(("24/7", "24/24")):
        return m.group(0)
    head = m.group(1) or "ngày"     # "đêm 26/11": no "ngày" after a time of day
    return _w(head, _num(m.group(2)), "tháng", _month(mo),
              "năm " + number_words(int(year)) if year else "")


# tháng 11/2022
@_pass(r"(?i:(tháng)\s+)?" + _B + r"(\d{1,2})/(\d{4})(?![\w/]|[.,]\d)")
def _month_year(m: re.Match[str]) -> str:
    mo = int(m.group(2))
    if not 1 <= mo <= 12:
        return m.group(0)
    return _w(m.group(1) or "tháng", _month(mo), "năm", number_words(int(m.group(3))))


_TIME = r"(\d{1,2})\s?(?:h|g|giờ|:)\s?(\d{2})?'?(?:\s?phút)?"


def _time_words(h: str, mi: str | None) -> str:
    words = _num(h) + " giờ"
    if mi and int(mi):
        words += " " + _num(mi) + " phút"
    return words


# 17h-19h, 7h30 - 9h
@_pass(r"(?i:(?:từ\s+)?)" + _B + r"(\d{1,2})(?:h|g|:)(\d{2})?\s*[-–—]\s*(\d{1,2})(?:h|g|:)(\d{2})?(?!\w)")
def _time_range(m: re.Match[str]) -> str:
    return _w("từ", _time_words(m.group(1), m.group(2)), "đến", _time_words(m.group(3), m.group(4)))


# 17h30, 5h00, 17:30, 17g30
@_pass(_B + r"(\d{1,2})(?:h|g)(\d{2})?'?(?:\s?phút)?(?!\w)|" + _B + r"(\d{1,2}):(\d{2})(?![\w:]|[.,]\d)")
def _time(m: re.Match[str]) -> str:
    h, mi = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if int(h) > 24 or (mi and int(mi) > 59):
        return m.group(0) if m.group(3) else _w(read_number(h), "giờ", read_number(mi) if mi else "")
    return _w(_time_words(h, mi))


# cấp 8-9 -> cấp tám đến cấp chín
@_pass(r"(?i:(cấp(?:\s+độ)?)\s+)(\d+)\s*[-–—]\s*(\d+)(?!\w|[.,]\d)")
def _level_range(m: re.Match[str]) -> str:
    return _w(m.group(1), read_number(m.group(2)), "đến", m.group(1), read_number(m.group(3)))


# 118-133 km/h, từ 200 - 300mm, 2-4m
@_pass(r"(?i:(từ)\s+)?" + _B + r"(" + _NUM + r")\s*[-–—]\s*(-?(?:" + _NUM + r"))\s?(" + _UNIT + r")?"
       + _UNIT_END + r"(?![.,]\d)")
def _range(m: re.Match[str]) -> str:
    unit = UNITS[m.group(4)] if m.group(4) else ""
    return _w("từ", read_number(m.group(2)), "đến", read_number(m.group(3)), unit)


# 14,5N-113,2E, 16,5°N, 112,3°E
@_pass(_B + r"(" + _NUM + r")\s?°?\s?([NS])\s*[-–,;/]?\s*(" + _NUM + r")\s?°?\s?([EW])(?!\w)")
def _coordinate_pair(m: re.Match[str]) -> str:
    return _w(read_number(m.group(1)), "độ", _COMPASS[m.group(2)] + ",", read_number(m.group(3)), "độ",
              _COMPASS[m.group(4)])


@_pass(_B + r"(" + _NUM + r")\s?°\s?([NSEWĐ])(?!\w)")
def _coordinate(m: re.Match[str]) -> str:
    return _w(read_number(m.group(1)), "độ", _COMPASS[m.group(2)])


_ROMAN_AFTER = (r"cấp(?:\s+độ)?|khóa|khoá|lần\s+thứ|thứ|quý|thế\s+kỷ|thế\s+kỉ|đại\s+hội|kỳ|kì|vùng|"
                r"khu\s+vực|phần|chương|mục|đợt|giai\s+đoạn|hạng|loại|tập|nhóm|mức|tuần|quân\s+khu|"
                r"Quân\s+khu|điều|khoản")


@_pass(r"(?i:(" + _ROMAN_AFTER + r"))\s+([IVXLCDM]+)(?!\w)")
def _roman(m: re.Match[str]) -> str:
    v = roman_value(m.group(2))
    if v is None:
        return m.group(0)
    word = _ordinal(v) if m.group(1).lower().endswith("thứ") else number_words(v)
    return _w(m.group(1), word)


# thứ 2 -> thứ hai, lần thứ 1 -> lần thứ nhất, thứ 4 -> thứ tư; tháng 4 -> tháng tư
@_pass(r"(?i:(thứ|tháng))\s+0*(\d{1,2})(?!\w|[.,/]\d)")
def _ordinal_word(m: re.Match[str]) -> str:
    n = int(m.group(2))
    if m.group(1).lower() == "tháng":
        return _w(m.group(1), _month(n) if 1 <= n <= 12 else number_words(n))
    return _w(m.group(1), _ordinal(n))


# 1A, 14B (roads, classes)
@_pass(_B + r"(\d+)([A-Z])(?!\w)")
def _number_letter(m: re.Match[str]) -> str:
    return _w(read_number(m.group(1)), spell(m.group(2)))


# 80%, 120 km/h, 13,8 mm, 500.000đ
@_pass(r"(?<![\w.,])(-?(?:" + _NUM + r"))\s?(" + _UNIT + r")" + _UNIT_END)
def _quantity(m: re.Match[str]) -> str:
    return _w(read_number(m.group(1)), UNITS[m.group(2)])


@_pass(r"(?:(?<=\s)|(?<=^)|(?<=\())-(?=\d)")
def _minus(m: re.Match[str]) -> str:
    return "âm "


@_pass(r"(" + _NUM + r")")
def _number(m: re.Match[str]) -> str:
    return _w(read_number(m.group(1)))


_SYMBOLS: list[tuple[re.Pattern[str], str | _Sub]] = [
    (re.compile(r"\s*&\s*"), " và "), (re.compile(r"%"), " phần trăm "),
    (re.compile(r"°\s?C\b"), " độ xê "), (re.compile(r"°"), " độ "),
    (re.compile(r"\s*\+\s*"), " cộng "), (re.compile(r"\s*=\s*"), " bằng "),
    (re.compile(r"\s*[>≥]\s*"), " trên "), (re.compile(r"\s*[<≤]\s*"), " dưới "),
    (re.compile(r"\s*[~≈]\s*"), " khoảng "), (re.compile(r"@"), " a còng "),
    (re.compile(r"(?<=\w)\s*/\s*(?=\w)"), " trên "),
    (re.compile(r"…|\.{2,}"), ". "),
    (re.compile(r"\s[-–—]+\s|^\s*[-–—•*]+\s*|[()\[\]{}]"), ", "),
    (re.compile(r"(?<=\w)[-–—](?=\w)"), " "),
]
_KEEP = re.compile(r"[^\w\s.,;:!?]|_")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_REPEATED_PUNCT = re.compile(r"([.,;:!?])(?:\s*[.,;:!?])+")


# the kind of a document in its number: số 12/CĐ-TTg, 05/NQ-HĐND
_DOC_TYPES = {"CĐ": "Công điện", "NQ": "Nghị quyết", "BC": "Báo cáo", "TTr": "Tờ trình",
              "HD": "Hướng dẫn", "GM": "Giấy mời", "KL": "Kết luận", "TTr-UBND": "Tờ trình Ủy ban nhân dân"}
_DOC_RE = re.compile(r"(?<=/)(" + "|".join(sorted(_DOC_TYPES, key=len, reverse=True)) + r")(?=[-\s.,;]|$)")


def _prepare(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    # control and format characters (and line separators) become spaces
    return "".join(" " if unicodedata.category(c)[0] in "CZ" and c != " " else c for c in text)


def _normalize_line(line: str) -> str:
    s = " " + _prepare(line) + " "
    s = _DOC_RE.sub(lambda m: _DOC_TYPES[m.group(1)], s)
    s = _ABBR_RE.sub(_expand, s)
    for pattern, fn in _PASSES:
        s = pattern.sub(fn, s)
    s = re.sub(r"(?<!\w)[^\W\d_]{2,}(?!\w)", _acronym, s)
    for pattern, repl in _SYMBOLS:
        s = pattern.sub(repl, s)
    s = re.sub(r"\d", lambda m: " " + digits_words(m.group(0)) + " ", s)   # anything left over
    s = _KEEP.sub(" ", s)
    s = " ".join(s.split())
    s = _SPACE_BEFORE_PUNCT.sub(r"\1", s)
    s = _REPEATED_PUNCT.sub(lambda m: _strongest(m.group(0)), s)
    s = re.sub(r"([.,;:!?])(?=\w)", r"\1 ", s)
    return s.strip(" ,;:")


def _strongest(run: str) -> str:
    for p in "?!.;:,":
        if p in run:
            return p
    return run[0]


def normalize(text: str) -> str:
    """The words a Vietnamese announcer reads for `text`, on one line (see the module doc)."""
    out: list[str] = []
    for line in re.split(r"[\n\r\u2028\u2029\x0b\x0c\x85]+", text):
        words = _normalize_line(line)
        if not words:
            continue
        if out and out[-1][-1] not in ".!?;:":
            out[-1] += "."
        out.append(words)
    return " ".join(out)


# --- sentences --------------------------------------------------------------------------------

_END = re.compile(r"([.!?;…]+)([\"'”’»)\]]*)(?=\s|$)")


def _ends_here(line: str, m: re.Match[str]) -> bool:
    if m.group(1) != ".":
        return True
    before = re.search(r"([\w./]+)$", line[max(0, m.start() - 40): m.start()])
    word = before.group(1) if before else ""
    if word in _NO_STOP or (len(word) == 1 and word.isupper()):
        return False
    if word.endswith("v.v"):    # "v.v." ends a sentence only before a capital
        rest = line[m.end():].lstrip()
        return not rest or rest[0].isupper()
    return True


def _cut_long(s: str, limit: int) -> list[str]:
    out: list[str] = []
    while len(s) > limit:
        window = s[:limit]
        cut = max(window.rfind(", "), window.rfind("; "))
        if cut < limit // 3:
            cut = window.rfind(" ")
        if cut < limit // 3:
            cut = limit - 1
        out.append(s[: cut + 1].strip())
        s = s[cut + 1:].strip()
    if s:
        out.append(s)
    return out


def sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """`text` cut into sentences as written (normalise each with `normalize`): on . ! ? ; … and
    line ends, not inside numbers ("13,8", "1.250", "07.07.2022") nor after "TP.", "TX.", an
    initial and the like. A sentence over `max_chars` is cut at a comma (else a space)."""
    out: list[str] = []
    for line in re.split(r"[\n\r\u2028\u2029\x0b\x0c\x85]+", text):
        start = 0
        for m in _END.finditer(line):
            if _ends_here(line, m):
                out += _cut_long(line[start: m.end()].strip(), max_chars)
                start = m.end()
        out += _cut_long(line[start:].strip(), max_chars)
    return [s for s in out if any(c.isalnum() for c in s)]


def spoken_sentences(text: str) -> list[str]:
    """`sentences(text)`, each normalised; sentences with nothing to say are dropped."""
    return [w for w in (normalize(s) for s in sentences(text)) if w]
