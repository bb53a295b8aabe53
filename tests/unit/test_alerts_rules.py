"""control/alerts/rules.py: the rule table of alert intake, one test per rule."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control.alerts import cap as C
from control.alerts.config import AlertLevelRule
from control.alerts.rules import (AlertBook, AreaIndex, AreaMatchesNothing, ReceiverPoint,
                                  RuleContext, issue_phrase, map_level, spoken_text)
from streamer.zones import Zone, ZoneTree
from tests.cap_build import cap, circle_area, geocode_area, info, polygon_area, resource

T0 = datetime(2025, 11, 26, 1, 0, tzinfo=UTC)  # 08:00 in Vietnam
S = "kttv@nchmf.gov.vn"
SQUARE = [(13.9, 109.2), (14.0, 109.2), (14.0, 109.3), (13.9, 109.3)]


def tree() -> ZoneTree:
    t = ZoneTree()
    t.add(Zone("gia-lai", level="province", code="52"))
    t.add(Zone("nhon-ly", parent="gia-lai", level="commune", code="21598"))
    t.add(Zone("ly-luong", parent="nhon-ly", level="village"))
    t.add(Zone("cat-hai", parent="gia-lai", level="commune"))
    t.add(Zone("drill", parent="gia-lai", level="commune"))
    t.validate()
    return t


RX = [ReceiverPoint("in-1", "ly-luong", 13.95, 109.25), ReceiverPoint("in-2", "cat-hai", 13.96, 109.26),
      ReceiverPoint("out-1", "cat-hai", 14.50, 109.90), ReceiverPoint("d-1", "drill", 13.951, 109.251)]


def ctx(**kw) -> RuleContext:
    return RuleContext(area=AreaIndex(tree(), {"cat-hai": ["21610", "21611"]}, RX), **kw)


def msg(**kw) -> C.CapAlert:
    return C.parse(cap(**kw))


def test_a_new_alert_airs_on_its_geocode_zone_and_subtree():
    d = AlertBook().receive(msg(), T0, ctx())
    assert d.outcome == "air" and d.level == "emergency"
    assert d.zones == ("ly-luong", "nhon-ly") and d.targets == ("nhon-ly",)


def test_zone_codes_list_matches_as_well_as_code():
    d = AlertBook().receive(msg(infos=[info(areas=[geocode_area("21611")])]), T0, ctx())
    assert d.zones == ("cat-hai",)


def test_duplicates_change_nothing():
    book = AlertBook()
    book.receive(msg(), T0, ctx())
    before = dict(book.records)
    again = book.receive(msg(infos=[info(headline="khác")]), T0 + timedelta(minutes=1), ctx())
    assert again.outcome == "duplicate" and book.records == before
    # the same identifier sent at another time is another alert
    assert book.receive(msg(sent="2025-11-26T08:05:00+07:00"), T0, ctx()).outcome == "air"
    # the same instant written in another zone is the same key
    assert book.receive(msg(sent="2025-11-26T01:00:00Z"), T0, ctx()).outcome == "duplicate"


def test_update_replaces_every_alert_it_names():
    book = AlertBook()
    book.receive(msg(identifier="A1"), T0, ctx())
    book.receive(msg(identifier="A2", infos=[info(areas=[geocode_area("21610")])]), T0, ctx())
    book.receive(msg(identifier="A3"), T0, ctx())
    up = msg(identifier="U1", msg_type="Update", sent="2025-11-26T09:00:00+07:00",
             references=f"{S},A1,2025-11-26T08:00:00+07:00 {S},A2,2025-11-26T08:00:00+07:00",
             infos=[info(areas=[polygon_area(SQUARE)])])
    d = book.receive(up, T0 + timedelta(hours=1), ctx())
    assert d.outcome == "air" and set(k[1] for k in d.stops) == {"A1", "A2"}
    assert d.receivers == ("d-1", "in-1", "in-2") and "out-1" not in d.receivers
    states = {k[1]: r.state for k, r in book.records.items()}
    assert states == {"A1": "superseded", "A2": "superseded", "A3": "active", "U1": "active"}


def test_cancel_stops_every_alert_it_names_and_airs_nothing():
    book = AlertBook()
    book.receive(msg(identifier="A1"), T0, ctx())
    book.receive(msg(identifier="A2"), T0, ctx())
    d = book.receive(msg(identifier="C1", msg_type="Cancel", infos=[],
                         references=f"{S},A1,2025-11-26T08:00:00+07:00 {S},A2,2025-11-26T08:00:00+07:00"),
                     T0, ctx())
    assert d.outcome == "cancel" and {k[1] for k in d.stops} == {"A1", "A2"} and not d.airs
    assert not book.active()


def test_a_cancelled_alert_arriving_late_never_airs():
    book = AlertBook()
    book.receive(msg(identifier="C1", msg_type="Cancel", infos=[],
                     references=f"{S},A9,2025-11-26T08:00:00+07:00"), T0, ctx())
    assert book.receive(msg(identifier="A9"), T0, ctx()).outcome == "log"


@pytest.mark.parametrize("status", ["Test", "Draft", "System"])
def test_test_draft_system_are_logged_never_aired(status):
    book = AlertBook()
    d = book.receive(msg(status=status), T0, ctx())
    assert d.outcome == "log" and not d.zones and book.records[d.key].state == "logged"


def test_a_test_cancel_does_not_cancel_a_real_alert():
    book = AlertBook()
    book.receive(msg(identifier="A1"), T0, ctx())
    book.receive(msg(identifier="C1", msg_type="Cancel", status="Test", infos=[],
                     references=f"{S},A1,2025-11-26T08:00:00+07:00"), T0, ctx())
    assert [r.alert.identifier for r in book.active()] == ["A1"]


def test_exercise_airs_only_on_drill_zones():
    area = [polygon_area(SQUARE)]
    d = AlertBook().receive(msg(status="Exercise", infos=[info(areas=area)]), T0, ctx(drill_zones=("drill",)))
    assert d.outcome == "air" and d.drill and d.zones == ("drill",) and d.receivers == ("d-1",)
    d2 = AlertBook().receive(msg(status="Exercise"), T0, ctx(drill_zones=("drill",)))
    assert d2.outcome == "log"  # its area has no drill zone
    assert AlertBook().receive(msg(status="Exercise", infos=[info(areas=area)]), T0, ctx()).outcome == "log"


def test_expired_on_arrival_is_logged_not_aired():
    d = AlertBook().receive(msg(infos=[info(expires="2025-11-26T07:59:59+07:00")]), T0, ctx())
    assert d.outcome == "log" and "expired" in d.reason


def test_expiry_ends_an_active_alert_and_repeats_stop():
    book = AlertBook()
    book.receive(msg(infos=[info(expires="2025-11-26T08:40:00+07:00")]), T0, ctx())
    rep, exp = book.due(T0 + timedelta(minutes=15))
    assert len(rep) == 1 and not exp and rep[0].airings == 2
    rep, exp = book.due(T0 + timedelta(minutes=30))
    assert len(rep) == 1 and rep[0].next_at is None  # the next one would be past expiry
    rep, exp = book.due(T0 + timedelta(minutes=40))
    assert not rep and len(exp) == 1 and not book.active()


def test_repeats_every_n_minutes_per_level_and_a_late_wake_airs_once():
    book = AlertBook()
    c = ctx(repeat_minutes={"emergency": 10, "priority": 0})
    book.receive(msg(infos=[info(expires=None)]), T0, c)
    book.receive(msg(identifier="P", infos=[info(expires=None, risk="1", severity="Minor")]), T0, c)
    assert book.due(T0 + timedelta(minutes=9))[0] == []
    rep, _ = book.due(T0 + timedelta(minutes=35))
    assert [r.alert.identifier for r in rep] == ["VN-KTTV-2025-0001"]
    assert rep[0].next_at == T0 + timedelta(minutes=40)
    assert book.next_wake() == T0 + timedelta(minutes=40)


@pytest.mark.parametrize("risk,sev,urg,cert,level", [
    ("3", "Minor", "Future", "Possible", "emergency"),     # risk level >= 3 alone
    ("Cấp 5", "Minor", "Future", "Possible", "emergency"),
    ("2", "Extreme", "Immediate", "Observed", "emergency"),  # severity/urgency/certainty
    ("2", "Severe", "Expected", "Likely", "emergency"),
    ("2", "Severe", "Future", "Likely", "priority"),
    ("2", "Moderate", "Immediate", "Observed", "priority"),
    (None, "Severe", "Immediate", "Possible", "priority"),
    ("1", "Minor", "Immediate", "Observed", "priority"),
])
def test_level_table_default(risk, sev, urg, cert, level):
    i = C.parse(cap(infos=[info(risk=risk, severity=sev, urgency=urg, certainty=cert)])).infos[0]
    assert map_level(i, ctx().level_rules, "capDoRuiRo")[0] == level


def test_level_table_and_parameter_name_come_from_settings():
    i = C.parse(cap(infos=[info(risk="2", risk_param="riskLevel")])).infos[0]
    rules = [AlertLevelRule(level="emergency", risk_min=2), AlertLevelRule(level="normal")]
    assert map_level(i, rules, "riskLevel") == ("emergency", 2)
    assert map_level(i, rules, "capDoRuiRo") == ("normal", None)


def test_risk_level_and_colour_are_kept():
    d = AlertBook().receive(msg(infos=[info(risk="4")]), T0, ctx())
    assert (d.risk_level, d.risk_colour_name, d.risk_colour) == (4, "đỏ", "#E53935")


def test_polygon_and_circle_reach_receivers_across_zones():
    d = AlertBook().receive(msg(infos=[info(areas=[circle_area(13.95, 109.25, 2.0)])]), T0, ctx())
    assert d.receivers == ("d-1", "in-1", "in-2") and d.zones == ("cat-hai", "drill", "ly-luong")
    assert d.by_geocode == ()


def test_an_area_matching_nothing_is_an_error():
    book = AlertBook()
    with pytest.raises(AreaMatchesNothing) as e:
        book.receive(msg(infos=[info(areas=[geocode_area("99999"), circle_area(10.0, 106.0, 1)])]), T0, ctx())
    assert e.value.code == "area_matches_nothing" and not book.records


def test_spoken_text_is_the_vi_block_with_the_issue_time():
    en = info(language="en-US", headline="Typhoon warning", description="Strong typhoon", instruction="Shelter")
    d = AlertBook().receive(msg(infos=[en, info()]), T0, ctx())
    assert d.language == "vi-VN"
    assert d.text == ("Bản tin phát lúc 8 giờ ngày 26 tháng 11. Cảnh báo bão số 13. Bão mạnh cấp 12 đổ bộ. "
                      "Người dân vào nơi trú ẩn an toàn.")
    assert issue_phrase(datetime(2025, 1, 2, 23, 30, tzinfo=UTC)) == "Bản tin phát lúc 6 giờ 30 phút ngày 3 tháng 1"


def test_spoken_text_falls_back_to_the_first_block_and_event():
    i = C.parse(cap(infos=[info(language="en-US", headline="", description="", instruction="", event="Flood")])).infos[0]
    assert spoken_text(i, T0).endswith("Flood.")


def test_an_audio_resource_is_chosen_over_speech():
    d = AlertBook().receive(msg(infos=[info(resources=resource("http://h/a.txt", mime="text/plain")
                                            + resource("http://h/a.wav", "b" * 40))]), T0, ctx())
    assert d.resource is not None and d.resource.uri == "http://h/a.wav"


def test_a_polygon_reaches_the_receivers_inside_not_their_whole_zones():
    # cat-hai has in-2 inside and out-1 outside: only in-2 of it is reached
    d = AlertBook().receive(msg(infos=[info(areas=[polygon_area(SQUARE)])]), T0, ctx())
    assert d.targets == ()
    assert d.parts == (("cat-hai", ("in-2",)), ("drill", ("d-1",)), ("ly-luong", ("in-1",)))
    assert d.zones == ("cat-hai", "drill", "ly-luong")
    # a zone a geocode reaches whole is not reached in part as well
    both = AlertBook().receive(msg(infos=[info(areas=[geocode_area("21598"),
                                                       circle_area(13.95, 109.25, 2.0)])]), T0, ctx())
    assert both.targets == ("nhon-ly",) and both.zones == ("cat-hai", "drill", "ly-luong", "nhon-ly")
    assert both.parts == (("cat-hai", ("in-2",)), ("drill", ("d-1",)))
    # kept with the alert (restart: repeats go on with the same reach)
    from control.alerts.store import decision_from_dict
    assert decision_from_dict(d.key, d.to_dict()).parts == d.parts


def test_an_exercise_polygon_reaches_receivers_of_drill_zones_only():
    x = AlertBook().receive(msg(status="Exercise", infos=[info(areas=[polygon_area(SQUARE)])]),
                            T0, ctx(drill_zones=("drill",)))
    assert x.drill and x.targets == () and x.parts == (("drill", ("d-1",)),)
