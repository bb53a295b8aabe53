"""The HTTP API on a real server: contracts, and bad input gets a clear 4xx while all else carries on."""
import os

import pytest

from streamer.ingest.tones import write_tone_wav

pytestmark = pytest.mark.integration

TOML = """
[[zones]]
id = "xa-nhon-ly"
name = "Xã Nhơn Lý"
unicast = ["127.0.0.1:{port}"]

[[zones]]
id = "thon-1"
name = "Thôn 1"
parent = "xa-nhon-ly"
"""


@pytest.fixture
def server(serve):
    from tests.integration.conftest import free_udp_ports
    return serve(TOML.format(port=free_udp_ports(1)[0]))


def test_health_zones_sdp_openapi(server):
    st, h = server.request("GET", "/api/v1/health")
    assert st == 200 and h["status"] == "ok"
    st, z = server.request("GET", "/api/v1/zones")
    ids = [x["id"] for x in z["zones"]]
    assert ids == ["xa-nhon-ly", "thon-1"]
    assert z["zones"][0]["name"] == "Xã Nhơn Lý"
    st, sdp = server.request("GET", "/api/v1/zones/xa-nhon-ly/sdp")
    assert st == 200
    assert "a=rtpmap:111 opus/48000/2" in sdp and "m=audio " in sdp and "c=IN IP4 127.0.0.1" in sdp
    st, doc = server.request("GET", "/api/v1/openapi.json")
    assert st == 200 and doc["openapi"].startswith("3.")
    assert "/api/v1/broadcasts" in doc["paths"]
    # the live routes are in the one route table, so documented like every other route
    paths = doc["paths"]
    assert set(paths["/api/v1/live/offer"]) == {"post"}
    assert paths["/api/v1/live/offer"]["post"]["x-loa-action"] == "live.start"
    assert "LiveOffer" in paths["/api/v1/live/offer"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["$ref"]
    assert set(paths["/api/v1/live/{broadcast}"]) == {"get", "delete"}
    assert "post" in paths["/api/v1/live/{broadcast}/hangup"]
    assert "get" in paths["/api/v1/live/ingest/rtp"]
    assert not any(p.startswith(("/live", "/dashboard")) for p in paths)  # pages are not API
    st, m = server.request("GET", "/metrics")
    assert st == 200 and "loa_encoders_active" in m


def test_bad_input_gets_clear_4xx_and_server_carries_on(server, tmp_path):
    good = tmp_path / "tone.wav"
    write_tone_wav(good, 1000, 5.0)
    st, b = server.request("POST", "/api/v1/broadcasts",
                           {"zones": ["xa-nhon-ly"], "source": {"kind": "file", "path": str(good)}})
    assert st == 201, b
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(os.urandom(4000))
    def play_file(path):
        return {"zones": ["xa-nhon-ly"], "source": {"kind": "file", "path": str(path)}}
    cases = [
        (play_file(corrupt), 422, "media_unplayable"),
        (play_file(tmp_path / "missing.wav"), 422, "media_unplayable"),
        (play_file(tmp_path), 422, "media_unplayable"),
        ({"zones": ["nowhere"], "source": {"kind": "tone"}}, 404, "unknown_zone"),
        ({"zones": ["xa-nhon-ly"], "level": "urgent", "source": {"kind": "tone"}}, 422, "invalid_request"),
        ({"zones": [], "source": {"kind": "tone"}}, 422, "invalid_request"),
        ({"zones": ["xa-nhon-ly"], "source": {"kind": "laser"}}, 422, "invalid_request"),
        ({"zones": ["xa-nhon-ly"], "source": {"kind": "tone", "freq_hz": "loud"}}, 422, "invalid_request"),
        ([1, 2, 3], 422, "invalid_request"),
    ]
    for body, status, code in cases:
        st, err = server.request("POST", "/api/v1/broadcasts", body)
        assert st == status, (body, err)
        assert err["error"]["code"] == code, err
        assert err["error"]["message"]
        assert "Traceback" not in str(err)
    for raw in (b"{not json", b"", b"\xff\xfe"):
        st, err = server.request("POST", "/api/v1/broadcasts", raw=raw)
        assert st == 400 and err["error"]["code"] in ("malformed_json", "empty_body")
    st, err = server.request("POST", "/api/v1/broadcasts", raw=b"x" * (2 * 1024 * 1024))
    assert st == 413
    st, err = server.request("GET", "/api/v1/zones/nowhere/sdp")
    assert st == 404 and err["error"]["code"] == "unknown_zone"
    st, err = server.request("DELETE", "/api/v1/broadcasts/nope")
    assert st == 404
    st, err = server.request("GET", "/api/v1/nothing-here")
    assert st == 404 and err["error"]["code"] == "not_found"
    st, err = server.request("PUT", "/api/v1/broadcasts")
    assert st == 405
    # the good broadcast still plays, and the server still serves
    st, cur = server.request("GET", f"/api/v1/broadcasts/{b['id']}")
    assert st == 200 and cur["state"] in ("queued", "playing")
    st, h = server.request("GET", "/api/v1/health")
    assert st == 200
    st, stopped = server.request("DELETE", f"/api/v1/broadcasts/{b['id']}")
    assert st == 200 and stopped["state"] == "stopped"
    st, lst = server.request("GET", "/api/v1/broadcasts?past=1")
    assert any(x["id"] == b["id"] and x["state"] == "stopped" for x in lst["broadcasts"])
