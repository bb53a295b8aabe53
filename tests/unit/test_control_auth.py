"""Roles, credentials and the state layer, without a server."""
from __future__ import annotations


import pytest
from cryptography.exceptions import InvalidTag

from control import auth, policy
from control.errors import Forbidden, Invalid, TooLarge
from control.policy import path_allowed
from control.service import parse_zone_csv
from streamer.mixer.arbitration import Level
from streamer.zones import Zone, ZoneTree


def tree() -> ZoneTree:
    t = ZoneTree()
    for zid, parent in [("tinh", None), ("xa-a", "tinh"), ("thon-a1", "xa-a"), ("xa-b", "tinh")]:
        t.add(Zone(zid, parent=parent))
    return t


def P(role, scope=(), name="u"):
    return policy.Principal(name, role, 1, tuple(scope))


@pytest.mark.parametrize("role,scope,zones,level,kind,ok", [
    ("admin", (), {"xa-b"}, Level.EMERGENCY, "file", True),
    ("operator", ("xa-a",), {"xa-a", "thon-a1"}, Level.PRIORITY, "tone", True),
    ("operator", ("xa-a",), {"xa-a"}, Level.EMERGENCY, "tone", False),
    ("operator", ("xa-a",), {"xa-b"}, Level.NORMAL, "tone", False),
    ("operator", ("xa-a",), {"thon-a1"}, Level.NORMAL, "file", False),
    ("official", ("thon-a1",), {"thon-a1"}, Level.PRIORITY, "media", True),
    ("official", ("thon-a1",), {"xa-a", "thon-a1"}, Level.NORMAL, "media", False),
    ("official", (), {"thon-a1"}, Level.NORMAL, "media", False),
    ("alert_authority", (), {"tinh", "xa-a", "thon-a1", "xa-b"}, Level.EMERGENCY, "tone", True),
    ("alert_authority", (), {"xa-a"}, Level.NORMAL, "tone", False),
    ("viewer", (), {"xa-a"}, Level.BACKGROUND, "tone", False),
])
def test_broadcast_policy(role, scope, zones, level, kind, ok):
    p = P(role, scope)
    if ok:
        policy.Policy.check_broadcast(p, tree(), zones, level, kind)
    else:
        with pytest.raises(Forbidden):
            policy.Policy.check_broadcast(p, tree(), zones, level, kind)


def test_policy_table_covers_roles_and_public_actions():
    assert policy.Policy.allows(None, "health.read")
    assert not policy.Policy.allows(None, "zones.read")
    assert policy.Policy.allows(P("viewer"), "zones.read")
    assert not policy.Policy.allows(P("viewer"), "broadcasts.start")
    assert not policy.Policy.allows(P("operator"), "zones.write")
    assert policy.Policy.allows(P("operator"), "media.write")
    assert not policy.Policy.allows(P("official"), "media.write")
    assert not policy.Policy.allows(P("alert_authority"), "audit.read")
    with pytest.raises(KeyError):
        policy.Policy.allows(P("admin"), "no.such.action")
    b = {"owner": "someone", "reached_zones": ["thon-a1"], "level": "normal"}
    assert policy.Policy.may_stop(P("operator", ("xa-a",)), tree(), b)
    assert not policy.Policy.may_stop(P("operator", ("xa-b",)), tree(), b)
    assert not policy.Policy.may_stop(P("official", ("thon-a1",)), tree(), b)
    assert policy.Policy.may_stop(P("official", ("thon-a1",), name="someone"), tree(), b)


def test_passwords_and_tokens():
    h = auth.hash_password("đúng rồi 123")
    assert h.startswith("scrypt$") and "đúng" not in h
    assert auth.verify_password("đúng rồi 123", h)
    assert not auth.verify_password("sai rồi 123", h)
    assert not auth.verify_password("x", None) and not auth.verify_password("x", "garbage")
    assert auth.hash_password("a") != auth.hash_password("a")  # salted
    tid, tok, th = auth.new_token()
    assert auth.parse_token(tok) == (tid, tok.split("_", 2)[2])
    assert auth.token_hash(tok.split("_", 2)[2]) == th
    for bad in ("", "loa_", "loa__x", "bearer_a_b", "loa_a"):
        assert auth.parse_token(bad) is None
    assert auth.is_loopback_host("127.0.0.1") and auth.is_loopback_host("::1")
    assert not auth.is_loopback_host("0.0.0.0") and not auth.is_loopback_host("10.1.2.3")


def test_login_throttle():
    t = auth.LoginThrottle(limit=3, window_s=60)
    keys = ["addr:1", "user:a"]
    for i in range(3):
        assert t.retry_after(keys, now=100 + i) == 0
        t.failed(keys, now=100 + i)
    assert t.retry_after(keys, now=103) == pytest.approx(57)
    assert t.retry_after(["user:a"], now=161) == 0  # window passed
    t.failed(keys, now=200)
    t.succeeded(keys)
    assert t.retry_after(keys, now=200) == 0


def test_secret_box(tmp_path):
    box = auth.SecretBox.load(None, tmp_path / "k")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    blob = box.seal(b"s" * 32, "rx-1")
    assert b"s" * 32 not in blob
    assert auth.SecretBox.load(None, tmp_path / "k").open(blob, "rx-1") == b"s" * 32
    with pytest.raises(InvalidTag):
        box.open(blob, "rx-2")  # bound to its receiver


def test_csv_parsing():
    rows = parse_zone_csv("\ufeffcode,name,parent_code,level\n01,Tỉnh,,Province\n\n0101,Huyện,01,district\n")
    assert rows == [{"id": "01", "code": "01", "name": "Tỉnh", "parent": None, "level": "province"},
                    {"id": "0101", "code": "0101", "name": "Huyện", "parent": "01", "level": "district"}]
    for bad in ("", "a,b\n1,2", "code,name,parent_code,level\n", "code,name,parent_code,level\n1,a\n",
                "code,name,parent_code,level\n../x,a,,x\n", "code,name,parent_code,level\n1,a,,x\n1,b,,x\n"):
        with pytest.raises((Invalid, TooLarge)):
            parse_zone_csv(bad)


def test_path_allowed(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.wav").write_bytes(b"x")
    (tmp_path / "m" / "l.wav").symlink_to(tmp_path / "out.wav")
    assert path_allowed(str(tmp_path / "m" / "a.wav"), [tmp_path / "m"])
    assert path_allowed(str(tmp_path / "m" / ".." / "out.wav"), [tmp_path / "m"]) is None
    assert path_allowed(str(tmp_path / "m" / "l.wav"), [tmp_path / "m"]) is None
    assert path_allowed(str(tmp_path / "m2" / "x"), [tmp_path / "m"]) is None


