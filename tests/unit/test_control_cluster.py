"""control/cluster.py, the pure parts: receivers' secrets sealed with the cluster key, and the
cluster settings that must fit together."""
from __future__ import annotations

import pytest

from control.cluster import SecretSeal, check, cluster_key
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
