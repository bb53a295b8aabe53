"""control/alerts/provinces.py: a province and its communes with official codes (after 2025)."""
import pytest

from control.alerts.provinces import UnknownProvince, find_province, province_csv, province_rows
from control.service import parse_zone_csv


@pytest.mark.parametrize("name", ["Gia Lai", "gia lai", "gia_lai", "GIA-LAI", "52", "Tỉnh Gia Lai"])
def test_find_by_name_codename_or_code(name):
    assert find_province(name).name == "Gia Lai"


def test_unknown_or_ambiguous_names_are_refused():
    for bad in ("Atlantis", "Bình Định", ""):  # Bình Định merged into Gia Lai in 2025
        with pytest.raises(UnknownProvince):
            find_province(bad)


def test_rows_are_the_province_and_its_communes_with_official_codes():
    rows = province_rows("Gia Lai")
    assert rows[0] == {"code": "52", "name": "Gia Lai", "parent_code": "", "level": "province"}
    communes = rows[1:]
    assert len(communes) == 135 and all(r["parent_code"] == "52" and len(r["code"]) == 5 for r in communes)
    assert {"code": "21583", "name": "Phường Quy Nhơn", "parent_code": "52", "level": "commune"} in communes
    assert len({r["code"] for r in rows}) == len(rows)
    hn = province_rows("Hà Nội")
    assert hn[0]["code"] == "01" and len(hn) == 127


def test_csv_goes_through_the_zone_importer():
    zones = parse_zone_csv(province_csv("Huế"))
    assert zones[0]["id"] == "46" and all(z["parent"] == "46" for z in zones[1:])
