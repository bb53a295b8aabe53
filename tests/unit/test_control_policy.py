"""Ownership by identity and reserved principal names (issue 13, finding 6a)."""
from __future__ import annotations

import pytest

from control.policy import Policy, Principal, owns, reserved_name
from streamer.zones import Zone, ZoneTree


def tree() -> ZoneTree:
    t = ZoneTree()
    for zid, parent in [("tinh", None), ("xa-a", "tinh"), ("thon-a1", "xa-a")]:
        t.add(Zone(zid, parent=parent))
    return t


def started_by(p: Principal, level: str = "emergency") -> dict:
    """A broadcast as the API shows it, started by `p` (control/broadcasts.py puts the
    starter's id into the source description)."""
    return {"owner": p.name, "owner_name": p.label, "level": level,
            "reached_zones": ["thon-a1"], "source": {"kind": "tone", "owner_id": p.id}}


BUILTINS = [Principal("admin-token", "admin", via="admin-token"),
            Principal("local-bootstrap", "admin", via="bootstrap"),
            Principal("studio", "admin", via="config")]


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda p: p.via)
@pytest.mark.parametrize("role", ["official", "operator", "alert_authority"])
def test_a_user_named_like_a_builtin_principal_owns_nothing_of_it(builtin, role):
    b = started_by(builtin)
    namesake = Principal(builtin.name, role, user_id=7, scope=("thon-a1",))
    assert not owns(namesake, b)
    assert not Policy.may_stop(namesake, tree(), b)
    assert not Policy.may_hang_up(namesake, b)
    assert owns(builtin, b)


def test_ownership_follows_the_account_not_its_name_or_display_name():
    an = Principal("an", "official", user_id=3, scope=("thon-a1",), display_name="Ông An")
    b = started_by(an, "priority")
    assert Policy.may_stop(an, tree(), b) and Policy.may_hang_up(an, b)
    # the account deleted and another made with the same name: somebody else
    assert not Policy.may_stop(Principal("an", "official", user_id=9, scope=("thon-a1",)), tree(), b)
    # a display name equal to the owner's name proves nothing
    assert not owns(Principal("binh", "official", user_id=4, display_name="an"), b)


def test_records_without_an_owner_id_fall_back_to_the_name_but_never_for_reserved_names():
    old = {"owner": "an", "level": "normal", "reached_zones": ["thon-a1"], "source": {}}
    assert owns(Principal("an", "official", user_id=3), old)
    old_admin = dict(old, owner="admin-token")
    assert not owns(Principal("admin-token", "official", user_id=3), old_admin)
    assert owns(Principal("admin-token", "admin", via="admin-token"), old_admin)


@pytest.mark.parametrize("name", ["admin-token", "Admin-Token", "local-bootstrap", "anonymous",
                                  "system", " admin-token"])
def test_builtin_names_are_reserved(name):
    assert reserved_name(name)


def test_configured_input_names_are_reserved_and_ordinary_names_are_not():
    assert reserved_name("Studio", ["studio"])
    assert not reserved_name("an") and not reserved_name("admin") and not reserved_name("token")
