"""control/playout.py: which relay URLs are refused (invalid_url) and which the allow list
lets through; the media a relay or playlist keeps from deletion; the installation's time zone
checked when settings load (control/settings.py)."""
from __future__ import annotations

import pytest

from control.errors import Invalid
from control.playout import check_relay_url, media_ids
from control.settings import Settings
from control.sources import BroadcastRequest


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://203.0.113.9/a.mp3", "rtmp://8.8.8.8/live", "gopher://x",
    "javascript:alert(1)", "http:///nohost", "//8.8.8.8/a.mp3", "8.8.8.8/a.mp3",
    "http://127.0.0.1:8000/live.mp3", "http://[::1]/a.mp3", "http://169.254.169.254/latest",
    "http://10.1.2.3/a.mp3", "http://192.168.1.10:8000/", "http://0.0.0.0/", "http://224.0.0.1/",
    "http://8.8.8.8:99999/", "http://8.8.8.8/a b.mp3", "http://8.8.8.8/a\r\nX: y",
    "http://[fe80::1]/a.mp3", "http://100.64.0.1/"])
def test_refused_urls(url):
    with pytest.raises(Invalid) as e:
        check_relay_url(url)
    assert e.value.code == "invalid_url"


@pytest.mark.parametrize("url", ["http://8.8.8.8/live.mp3", "https://1.1.1.1:8443/a.m3u8",
                                 "HTTP://8.8.4.4/x.aac"])
def test_public_addresses_are_relayed(url):
    check_relay_url(url)


def test_the_allow_list_opens_loopback_and_private_networks_only_as_named():
    check_relay_url("http://127.0.0.1:8000/live.mp3", ["127.0.0.1"])
    check_relay_url("http://10.20.30.40/a.mp3", ["10.20.0.0/16"])
    with pytest.raises(Invalid):
        check_relay_url("http://127.0.0.2:8000/live.mp3", ["127.0.0.1"])
    with pytest.raises(Invalid):
        check_relay_url("http://10.21.0.1/a.mp3", ["10.20.0.0/16"])
    with pytest.raises(Invalid):   # the allow list never makes another scheme acceptable
        check_relay_url("file://127.0.0.1/etc/passwd", ["127.0.0.1"])


def test_media_kept_by_playlists_and_fallbacks():
    req = BroadcastRequest.model_validate({"zones": ["a"], "source": {
        "kind": "playlist", "items": [{"kind": "media", "id": "ab12"}, {"kind": "tone"},
                                      {"kind": "tts", "text": "Xin chào"},
                                      {"kind": "media", "id": "cd34"}]}})
    assert media_ids(req.source) == ["ab12", "cd34"]
    relay = BroadcastRequest.model_validate({"zones": ["a"], "source": {
        "kind": "relay", "url": "http://8.8.8.8/a.mp3", "fallback": "ef56"}})
    assert media_ids(relay.source) == ["ef56"]
    plain = BroadcastRequest.model_validate({"zones": ["a"], "source": {
        "kind": "relay", "url": "http://8.8.8.8/a.mp3"}})
    assert media_ids(plain.source, Settings(relay_fallback="0a0b")) == ["0a0b"]
    assert media_ids(plain.source, Settings()) == []


def test_an_unknown_time_zone_fails_when_settings_load():
    with pytest.raises(ValueError, match="unknown time zone 'Asia/Hanoi_Typo'"):
        Settings(timezone="Asia/Hanoi_Typo")
    assert Settings(timezone="Asia/Bangkok").timezone == "Asia/Bangkok"
