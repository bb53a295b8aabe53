"""Vietnam's administrative units after the 1 July 2025 reorganisation (34 provinces → 3,321
communes/wards/special zones, no districts), from the `vietnam-provinces` package's data, as
zone rows with their official codes: `loa zones import --province NAME`. Pure."""
from __future__ import annotations

import csv
import io
import unicodedata


class UnknownProvince(ValueError):
    pass


def _fold(s: str) -> str:
    s = unicodedata.normalize("NFD", s.replace("đ", "d").replace("Đ", "D"))
    s = "".join(c for c in s if unicodedata.category(c) != "Mn").lower()
    for prefix in ("thanh pho ", "tinh ", "thanh_pho_", "tinh_"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    return s.replace("_", " ").replace("-", " ").strip()


def find_province(name: str):  # -> vietnam_provinces.Province
    from vietnam_provinces import Province
    want = _fold(name)
    matches = [p for p in Province.iter_all()
               if want in (_fold(p.name), _fold(p.codename), str(int(p.code)), f"{int(p.code):02d}")]
    if len(matches) != 1:
        names = ", ".join(sorted(p.name for p in Province.iter_all()))
        raise UnknownProvince(f"no single province matches {name!r}; one of: {names}")
    return matches[0]


def province_rows(name: str) -> list[dict]:
    """The province (id and code: its 2-digit official code) and its communes (5-digit codes)."""
    from vietnam_provinces import Ward
    p = find_province(name)
    pcode = f"{int(p.code):02d}"
    rows = [{"code": pcode, "name": p.name, "parent_code": "", "level": "province"}]
    for w in Ward.iter_all():
        if int(w.province_code) == int(p.code):
            rows.append({"code": f"{int(w.code):05d}", "name": w.name, "parent_code": pcode,
                         "level": "commune"})
    return rows


def province_csv(name: str) -> str:
    """The rows as the CSV `loa zones import FILE` and `POST /zones/import` take."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["code", "name", "parent_code", "level"])
    for r in province_rows(name):
        w.writerow([r["code"], r["name"], r["parent_code"], r["level"]])
    return buf.getvalue()
