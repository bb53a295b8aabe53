"""The relay's address check (streamer/ingest/relay_http.py), pure: which addresses a relay may
reach, a name resolved once per session (a rebinding resolver cannot change the address after
the check), URLs other than http(s) refused before anything is resolved; and the API's early
check (control/playout.py) uses the same policy."""
from __future__ import annotations

import pytest

from control.errors import Invalid
from control.playout import check_relay_url
from streamer.ingest.base import MediaError
from streamer.ingest.relay_http import AddressPolicy, BlockedAddress, PinnedOpener, split_url


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "10.0.0.5", "172.16.3.4",
                                     "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                                     "224.0.0.251", "::1", "fe80::1", "fc00::5", "::ffff:10.0.0.1"])
def test_private_local_and_multicast_addresses_are_refused(address):
    p = AddressPolicy()
    assert not p.address_allowed("radio.example", address)
    with pytest.raises(BlockedAddress, match="private or local"):
        p.choose("radio.example", [address])


@pytest.mark.parametrize("address", ["203.162.4.190", "8.8.8.8", "2001:4860:4860::8888"])
def test_public_addresses_pass(address):
    assert AddressPolicy().choose("radio.example", [address]) == address


def test_one_private_answer_among_public_ones_refuses_the_name():
    with pytest.raises(BlockedAddress):
        AddressPolicy().choose("rebind.example", ["203.162.4.190", "10.1.2.3"])
    with pytest.raises(MediaError):
        AddressPolicy().choose("nothing.example", [])


def test_the_allow_list_by_name_address_and_network():
    p = AddressPolicy(["Station.Local", "10.20.0.0/16", "192.168.5.7", " ", "not a net/x"])
    assert p.choose("station.local", ["10.99.0.1"]) == "10.99.0.1"      # by name
    assert p.choose("station.local.", ["127.0.0.1"]) == "127.0.0.1"
    assert p.choose("vov.lan", ["10.20.3.4"]) == "10.20.3.4"            # by network
    assert p.choose("box.lan", ["192.168.5.7"]) == "192.168.5.7"        # by address
    with pytest.raises(BlockedAddress):
        p.choose("box.lan", ["192.168.5.8"])
    with pytest.raises(BlockedAddress):
        p.choose("other.lan", ["10.21.0.1"])
    assert p.name_allowed("10.20.1.1") and not p.name_allowed("10.21.1.1")


class Rebinding:
    """Answers a public address first, then the cloud metadata address."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        return ["203.162.4.190"] if len(self.asked) == 1 else ["169.254.169.254"]


def test_a_session_resolves_each_host_once_and_keeps_the_checked_address():
    r = Rebinding()
    o = PinnedOpener(AddressPolicy(), resolver=r)
    assert o.address("vov.example", 80) == "203.162.4.190"
    # the playlist's reloads and segments ask again: same address, no second lookup
    assert o.address("VOV.example", 80) == "203.162.4.190"
    assert r.asked == [("vov.example", 80)]
    # a new session (a reconnect) resolves and checks again: now refused
    o2 = PinnedOpener(AddressPolicy(), resolver=r)
    with pytest.raises(BlockedAddress):
        o2.address("vov.example", 80)


def test_literal_addresses_are_checked_without_a_lookup():
    def never(host: str, port: int) -> list[str]:
        raise AssertionError("resolved a literal address")
    o = PinnedOpener(AddressPolicy(), resolver=never)
    with pytest.raises(BlockedAddress):
        o.address("127.0.0.1", 80)
    with pytest.raises(BlockedAddress):
        o.address("[::1]", 80)
    assert o.address("8.8.8.8", 80) == "8.8.8.8"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.ts", "http:///nohost",
                                 "crypto+file:///k", "http://a b/x", "http://x/\r\nHost: y",
                                 "http://x:99999/"])
def test_only_http_urls_are_opened_and_nothing_is_resolved_for_others(url):
    asked: list[str] = []
    o = PinnedOpener(AddressPolicy(), resolver=lambda h, p: asked.append(h) or ["8.8.8.8"])
    body = o.io_open(url, 1, {})
    assert body.read(100) == b"" and o.failures == 1 and o.last_error
    assert asked == [] and o.requests == []


def test_a_blocked_segment_reads_empty_and_is_counted():
    o = PinnedOpener(AddressPolicy(), resolver=lambda h, p: ["10.0.0.9"])
    body = o.io_open("http://cdn.example/seg1.ts", 1, {})
    assert body.read(10) == b"" and o.blocked == 1 and "private" in (o.last_error or "")
    assert o.io_open("http://cdn.example/seg1.ts", 2, {}).read(1) == b""   # a write open


def test_split_url():
    t = split_url("https://Radio.example:8443/live/index.m3u8?token=1")
    assert (t.scheme, t.host, t.port, t.path) == ("https", "radio.example", 8443,
                                                  "/live/index.m3u8?token=1")
    assert split_url("http://radio.example").path == "/"
    assert split_url("http://radio.example").port == 80


def test_the_api_check_uses_the_same_policy():
    public = lambda h, p: ["203.162.4.190"]
    private = lambda h, p: ["192.168.1.20"]
    check_relay_url("http://vov.example/live.mp3", (), resolver=public)
    with pytest.raises(Invalid) as e:
        check_relay_url("http://vov.example/live.mp3", (), resolver=private)
    assert e.value.code == "invalid_url" and "relay_allow_hosts" in e.value.message
    check_relay_url("http://vov.example/live.mp3", ("192.168.1.0/24",), resolver=private)
    check_relay_url("http://vov.example/live.mp3", ("vov.example",), resolver=private)
    with pytest.raises(Invalid):
        check_relay_url("http://127.0.0.1:8000/x", ())
    with pytest.raises(Invalid):
        check_relay_url("ftp://vov.example/x", ("vov.example",))
