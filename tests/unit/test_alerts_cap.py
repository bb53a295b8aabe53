"""control/alerts/cap.py: CAP 1.2 parsing, and hostile XML refused with a clear error."""
from __future__ import annotations

import pytest

from control.alerts import cap as C
from control.errors import Invalid, TooLarge
from tests.cap_build import cap, circle_area, info, polygon_area, resource


def test_parses_the_fields_the_rules_need():
    a = C.parse(cap(infos=[info(areas=[polygon_area([(13.9, 109.2), (14.0, 109.2), (14.0, 109.3)]),
                                       circle_area(14.1, 109.1, 5)],
                                resources=resource("http://x/a.wav", "a" * 40))]))
    assert a.key == ("kttv@nchmf.gov.vn", "VN-KTTV-2025-0001", "2025-11-26T01:00:00Z")
    assert a.status == "Actual" and a.msg_type == "Alert" and not a.signed
    i = a.infos[0]
    assert i.language == "vi-VN" and i.severity == "Severe" and i.parameter("capDoRuiRo") == "4"
    assert i.areas[0].polygons[0][0] == (13.9, 109.2) and i.areas[1].circles == ((14.1, 109.1, 5.0),)
    assert i.resources[0].digest == "a" * 40
    assert a.expires is not None and C.utc_key(a.expires) == "2025-11-26T13:00:00Z"


def test_references_are_triples_compared_in_utc():
    a = C.parse(cap(msg_type="Cancel", identifier="X2",
                    references="kttv@nchmf.gov.vn,VN-1,2025-11-26T08:00:00+07:00 s,i,2025-11-26T01:00:00-00:00"))
    assert a.references == (("kttv@nchmf.gov.vn", "VN-1", "2025-11-26T01:00:00Z"),
                            ("s", "i", "2025-11-26T01:00:00Z"))


XXE = b"""<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>&x;</identifier></alert>"""
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
          + b"".join(b'<!ENTITY %s "%s">' % (bytes([98 + i]), (b"&" + bytes([97 + i]) + b";") * 10) for i in range(8))
          + b']><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><note>&i;</note></alert>')
PARAM_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>"""
BARE_DTD = b"""<?xml version="1.0"?><!DOCTYPE alert SYSTEM "http://127.0.0.1:1/cap.dtd">
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>"""


@pytest.mark.parametrize("data,code", [
    (XXE, "forbidden_xml"), (LAUGHS, "forbidden_xml"), (PARAM_ENTITY, "forbidden_xml"),
    (BARE_DTD, "forbidden_xml"),
    (cap()[:-40], "invalid_xml"), (b"", "invalid_xml"), (b"\xff\xfe<a", "invalid_xml"),
    (cap(ns="urn:oasis:names:tc:emergency:cap:1.1"), "wrong_namespace"),
    (b"<alert><identifier>x</identifier></alert>", "wrong_namespace"),
    (cap().replace(b"<sender>kttv@nchmf.gov.vn</sender>", b""), "invalid_cap"),
    (cap(status="Real"), "invalid_cap"),
    (cap(sent="2025-11-26T08:00:00"), "invalid_cap"),  # no time zone
    (cap(msg_type="Update"), "invalid_cap"),  # an Update must name what it replaces
    (cap(msg_type="Cancel", references="a,b"), "invalid_cap"),
    (cap(infos=[info(urgency="Now")]), "invalid_cap"),
    (cap(infos=[info(areas=[polygon_area([(1, 2), (3, 4)])])]), "invalid_cap"),
    (cap(infos=[info(areas=[polygon_area([(91, 2), (3, 4), (5, 6)])])]), "invalid_cap"),
    (cap(infos=[info(areas=[circle_area(1, 2, -3)])]), "invalid_cap"),
    (cap(infos=[info(resources=resource("http://x/a.wav", "zz"))]), "invalid_cap"),
    (cap(identifier="a b"), "invalid_cap"),
])
def test_hostile_or_broken_messages_are_refused(data, code):
    with pytest.raises(Invalid) as e:
        C.parse(data)
    assert e.value.code == code, e.value.message


def test_size_cap_before_parsing():
    big = cap(infos=[info(description="x" * 5000)])
    with pytest.raises(TooLarge):
        C.parse(big, max_bytes=4000)
    assert C.parse(big, max_bytes=len(big)).infos[0].description.startswith("xxx")
