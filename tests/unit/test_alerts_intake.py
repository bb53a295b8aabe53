"""control/alerts/intake.py, the parts that decide without IO: what a decision's StartBroadcast
addresses (`_reach`): the zones reached whole, and the receivers of a zone reached in part."""
from __future__ import annotations

from types import SimpleNamespace

from control.alerts.intake import AlertIntake
from control.alerts.rules import Decision

KEY = ("s", "A1", "2025-11-26T01:00:00+00:00")


def reach(d, addresses, registered=None, per_receiver=True):
    me = SimpleNamespace(_addresses=addresses, registered=registered or (lambda rid: None),
                         per_receiver=per_receiver)
    return AlertIntake._reach(me, d)  # type: ignore[arg-type]


D = Decision(KEY, "air", "a new alert", targets=("nhon-ly",),
             parts=(("cat-hai", ("in-2", "in-3")), ("drill", ("d-1",))))


def test_the_receivers_inside_by_their_addresses():
    targets, alone, only = reach(D, {"in-2": ("10.0.0.2", 5004), "in-3": ("10.0.0.3", 5004),
                                     "d-1": ("10.0.0.9", 5004)})
    assert targets == ("nhon-ly",) and alone == ()
    assert only == {"cat-hai": (("10.0.0.2", 5004), ("10.0.0.3", 5004)),
                    "drill": (("10.0.0.9", 5004),)}


def test_a_registered_receiver_by_its_observed_address_as_well():
    seen = {"in-3": ("203.0.113.7", 40001)}
    _, _, only = reach(D, {"in-2": ("10.0.0.2", 5004), "in-3": ("10.0.0.3", 5004),
                           "d-1": ("10.0.0.9", 5004)}, registered=seen.get)
    assert sorted(only["cat-hai"]) == [("10.0.0.2", 5004), ("10.0.0.3", 5004), ("203.0.113.7", 40001)]


def test_a_receiver_inside_without_an_address_reaches_its_zone_whole_never_less():
    targets, alone, only = reach(D, {"in-2": ("10.0.0.2", 5004), "d-1": ("10.0.0.9", 5004)})
    assert targets == ("nhon-ly", "cat-hai") and alone == ("cat-hai",)
    assert only == {"drill": (("10.0.0.9", 5004),)}


def test_several_nodes_reach_the_zones_whole():
    targets, alone, only = reach(D, {"in-2": ("10.0.0.2", 5004), "in-3": ("10.0.0.3", 5004),
                                     "d-1": ("10.0.0.9", 5004)}, per_receiver=False)
    assert targets == ("nhon-ly", "cat-hai", "drill") and alone == ("cat-hai", "drill")
    assert only == {}
