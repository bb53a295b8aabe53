"""Arbitration table: every pair of levels × modes × overlapping/nested/disjoint targets."""
import itertools

import pytest

from streamer.mixer.arbitration import Claim, Layer, Level, arbitrate, live_conflict

LEVELS = list(Level)
MODES = ["preempt", "duck", "mix"]
# target shapes for A (first admitted) and B (second): zone sets
SHAPES = {
    "same": ({"z1", "z2"}, {"z1", "z2"}),
    "overlapping": ({"z1", "z2"}, {"z2", "z3"}),
    "nested": ({"z1", "z2", "z3"}, {"z2"}),  # B targets a sub-zone of A's area
    "disjoint": ({"z1"}, {"z2"}),
}


def expected_layers(a: Claim, b: Claim, zone: str, duck_db: float):
    cands = [c for c in (a, b) if zone in c.zones]
    if not cands:
        return None
    if len(cands) == 1:
        return (Layer(cands[0].id, 0.0),)
    hi, lo = (a, b) if a.level > b.level else (b, a) if b.level > a.level else (a, b)
    if hi.level == lo.level:
        return (Layer(a.id, 0.0),)  # first come first served
    if hi.mode == "preempt":
        return (Layer(hi.id, 0.0),)
    return (Layer(hi.id, 0.0), Layer(lo.id, duck_db if hi.mode == "duck" else 0.0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("la,lb", list(itertools.product(LEVELS, LEVELS)))
@pytest.mark.parametrize("ma,mb", list(itertools.product(MODES, MODES)))
def test_pairs(shape, la, lb, ma, mb):
    za, zb = SHAPES[shape]
    a = Claim("A", la, frozenset(za), 1, ma)
    b = Claim("B", lb, frozenset(zb), 2, mb)
    out = arbitrate([b, a], duck_db=-15.0)  # input order must not matter
    for zone in sorted(za | zb):
        assert out.get(zone) == expected_layers(a, b, zone, -15.0), (zone, out.get(zone))


def test_not_ready_claim_does_not_take_the_zone():
    a = Claim("prog", Level.NORMAL, frozenset({"z"}), 1)
    e = Claim("alert", Level.EMERGENCY, frozenset({"z"}), 2, ready=False)
    assert arbitrate([a, e])["z"] == (Layer("prog", 0.0),)
    e2 = Claim("alert", Level.EMERGENCY, frozenset({"z"}), 2, ready=True)
    assert arbitrate([a, e2])["z"] == (Layer("alert", 0.0),)


def test_live_goes_before_stored_items_at_its_level():
    f = Claim("file", Level.NORMAL, frozenset({"z"}), 1)
    live = Claim("mic", Level.NORMAL, frozenset({"z"}), 2, live=True)
    assert arbitrate([f, live])["z"][0].claim_id == "mic"


def test_three_levels_duck_chain():
    bg = Claim("bg", Level.BACKGROUND, frozenset({"z"}), 1)
    n = Claim("n", Level.NORMAL, frozenset({"z"}), 2, mode="duck")
    e = Claim("e", Level.EMERGENCY, frozenset({"z"}), 3, mode="duck")
    assert arbitrate([bg, n, e])["z"] == (Layer("e", 0), Layer("n", -15.0), Layer("bg", -30.0))


def test_same_level_queue_is_first_come_first_served_per_zone():
    a = Claim("a", Level.NORMAL, frozenset({"z1", "z2"}), 5)
    b = Claim("b", Level.NORMAL, frozenset({"z2", "z3"}), 6)
    c = Claim("c", Level.NORMAL, frozenset({"z2"}), 4)
    out = arbitrate([a, b, c])
    assert out["z1"][0].claim_id == "a"
    assert out["z2"][0].claim_id == "c"
    assert out["z3"][0].claim_id == "b"


def test_live_conflict_names_holder_at_same_or_higher_level():
    held = Claim("mic1", Level.PRIORITY, frozenset({"z1", "z2"}), 1, live=True, owner="ông An")
    same = Claim("mic2", Level.PRIORITY, frozenset({"z2"}), 2, live=True)
    lower = Claim("mic3", Level.NORMAL, frozenset({"z2"}), 3, live=True)
    higher = Claim("mic4", Level.EMERGENCY, frozenset({"z2"}), 4, live=True)
    elsewhere = Claim("mic5", Level.NORMAL, frozenset({"z9"}), 5, live=True)
    stored = Claim("file", Level.NORMAL, frozenset({"z1"}), 6)
    assert live_conflict(same, [held]) is held
    assert live_conflict(lower, [held]) is held
    assert live_conflict(higher, [held]) is None
    assert live_conflict(elsewhere, [held]) is None
    assert live_conflict(stored, [held]) is None


def test_level_parse():
    assert Level.parse("Emergency") is Level.EMERGENCY
    with pytest.raises(ValueError):
        Level.parse("urgent")
