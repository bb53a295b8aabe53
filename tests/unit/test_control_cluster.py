"""control/cluster.py, the pure parts: receivers' secrets sealed with the cluster key, and the
cluster settings that must fit together."""
from __future__ import annotations

import pytest

from control.cluster import SecretSeal, check, cluster_key, hold_vanished_edges
from control.settings import ConfigError, Settings

KEY = b"k" * 40


def test_a_sealed_secret_opens_only_for_its_receiver_and_key():
    seal = SecretSeal(KEY)
    blob = seal.seal("rx-1", b"\x01" * 32, "xa-nhon-ly")
    assert seal.open("rx-1", blob) == (b"\x01" * 32, "xa-nhon-ly")
    assert b"xa-nhon-ly" not in blob                      # sealed, not only signed
    assert seal.open("rx-2", blob) is None                # moved to another receiver's field
    assert SecretSeal(b"j" * 40).open("rx-1", blob) is None
    assert seal.open("rx-1", blob[:-1] + bytes([blob[-1] ^ 1])) is None
    assert seal.open("rx-1", b"") is None
    assert seal.seal("rx-1", b"\x01" * 32, "z") != seal.seal("rx-1", b"\x01" * 32, "z")  # nonces


def test_cluster_settings_fit_together():
    check(Settings())                                     # one node: nothing needed
    with pytest.raises(ConfigError, match="redis_url"):
        check(Settings(role="edge"))
    with pytest.raises(ConfigError, match="cluster_key"):
        check(Settings(role="origin", redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(ConfigError, match="32"):
        check(Settings(redis_url="redis://127.0.0.1:1/0", cluster_key="short"))
    s = Settings(role="origin", redis_url="redis://127.0.0.1:1/0", cluster_key="x" * 32)
    check(s)
    assert cluster_key(s) == b"x" * 32


def test_the_key_can_come_from_a_file(tmp_path):
    p = tmp_path / "cluster.key"
    p.write_bytes(b"y" * 48 + b"\n")
    s = Settings(redis_url="redis://127.0.0.1:1/0", cluster_key_file=p)
    assert cluster_key(s) == b"y" * 48
    with pytest.raises(ConfigError, match="cannot read"):
        cluster_key(Settings(redis_url="redis://x/0", cluster_key_file=tmp_path / "none"))


def test_an_edge_missing_before_its_hash_would_expire_still_serves_its_zones():
    a = ("1", frozenset({"xa-1"}))
    b = ("2", frozenset({"xa-2"}))
    expiry: dict[str, float] = {}
    edges = [{"node": "edge-a", "at": "100.0"}, {"node": "edge-b", "at": "101.0"}]
    seen = hold_vanished_edges({}, {"edge-a": a, "edge-b": b}, edges, expiry, 101.5)
    assert seen == {"edge-a": a, "edge-b": b} and expiry == {"edge-a": 106.0, "edge-b": 107.0}
    # Redis restarted empty: nobody in the registry; both hashes would still live
    assert hold_vanished_edges(seen, {}, [], expiry, 102.0) == seen
    # edge-b writes its hash again; edge-a is dead and its hash's time is up
    again = hold_vanished_edges(seen, {"edge-b": b}, [{"node": "edge-b", "at": "103.0"}],
                                expiry, 106.0)
    assert again == {"edge-b": b} and "edge-a" not in expiry
    # an edge in the registry that no longer serves anything is not held
    assert hold_vanished_edges(again, {}, [{"node": "edge-b", "at": "104.0"}], expiry,
                               104.5) == {}
