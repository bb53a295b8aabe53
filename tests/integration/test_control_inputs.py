"""No input, on any route, in any body, path, query or header, produces a 5xx (issue 13,
finding 6e): a property-based run (hypothesis) over the whole route table, the pages included,
against the real app on loopback, plus the issue's own examples."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

TOKEN = "inputs-admin-token-0123456789"
ZONES = [{"id": "tinh", "name": "Tỉnh"}, {"id": "xa", "parent": "tinh"},
         {"id": "thon", "parent": "xa"}]

#: raw JSON fragments the parser accepts (or nearly) and code behind it choked on
NASTY = [
    "1" * 5001, "-" + "9" * 4400, "1e999", "-1e400", "NaN", "Infinity", "1" * 999,
    '"\\ud800"', '"a\\udfffb"', '"\\ud83d\\ude00"', '"x\\u0000y"',
    '"a\\r\\nc=IN IP4 6.6.6.6\\r\\nm=audio 9 RTP/AVP 0"', '"\\u2028\\u2029\\u0085"',
    "[" * 3000 + "]" * 3000, '{"a":' * 200 + "1" + "}" * 200, "[" * 70 + "]" * 70,
    '"' + "ư" * 5000 + '"', "true", "null", "{}", "[]", '""', "0", "-0.0", "1.5e308",
]
KEYS = ["zones", "level", "source", "kind", "name", "username", "title", "id", "sdp", "type",
        "parent", "unicast", "multicast", "zone", "address", "role", "scope", "password",
        "display_name", "receivers", "seconds", "freq_hz", "media_id", "path", "gain_db",
        "mode", "repeat", "language", "tags", "code", "disabled", "freq", "lat", "lon"]
PATH_PARTS = ["tinh", "xa", "1", "0", "%ED%A0%80", "%C3%28", "%00", "a%0D%0Ab", "%E2%80%A8",
              "9" * 5000, "²", "..", "%2e%2e", "x" * 300, "%F0%9F%98%80", "admin-token",
              "live.js", "dashboard.css"]
HEADER_VALUES = ["", "1" * 5001, "²", "\t", "application/json", "text/plain", "x" * 4000,
                 "null", "http://evil.example", "\u00ff\u00fe", "bytes=0-1", "999999999999",
                 "multipart/form-data; boundary=x", "text/csv"]
HEADER_NAMES = ["Last-Event-ID", "Origin", "Content-Type", "Accept", "If-None-Match", "Range",
                "Cookie", "X-Forwarded-For", "Accept-Language", "Authorization"]


def fill(template: str, fragments: list[str]) -> str:
    it = iter(fragments)
    return re.sub(r'"@@F@@"', lambda m: next(it, "null"), template)


values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=20),
              st.sampled_from(["tinh", "xa", "thon", "emergency", "normal", "tone", "chime",
                               "media", "file", "offer", "127.0.0.1:9", "/etc/passwd"]),
              st.just("@@F@@")),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(KEYS), children, max_size=5)),
    max_leaves=12)
bodies = st.one_of(
    st.tuples(st.dictionaries(st.sampled_from(KEYS), values, max_size=6),
              st.lists(st.sampled_from(NASTY), max_size=4)).map(
        lambda t: fill(json.dumps(t[0]), t[1]).encode()),
    st.sampled_from(NASTY).map(str.encode),
    st.binary(max_size=64))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app on loopback for every example, on a loop of its own (hypothesis drives it)."""
    from aiohttp.test_utils import TestClient, TestServer

    from control.app import create_app
    from control.settings import Settings
    loop = asyncio.new_event_loop()
    settings = Settings(data_dir=tmp_path_factory.mktemp("inputs"), admin_token=TOKEN, send_port=0,
                        zones=ZONES)
    application = create_app(settings)
    client = TestClient(TestServer(application), loop=loop)
    loop.run_until_complete(client.start_server())
    routes = application["loa"].route_table()
    yield loop, client, routes
    loop.run_until_complete(client.close())
    loop.close()


async def call(client: Any, method: str, url: str, body: bytes | None,
               headers: dict[str, str]) -> int:
    async with asyncio.timeout(20):
        r = await client.request(method, url, data=body, headers=headers,
                                 skip_auto_headers=("Content-Type",))
        status = r.status
        r.close()
        return status


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_no_input_on_any_route_gives_a_server_error(app, data):
    loop, client, routes = app
    route = data.draw(st.sampled_from(routes), label="route")
    url = re.sub(r"\{[^}]+\}", lambda m: data.draw(st.sampled_from(PATH_PARTS)), route.url)
    if data.draw(st.booleans(), label="query"):
        url += "?" + "&".join(f"{k}={v}" for k, v in data.draw(st.dictionaries(
            st.sampled_from(["since", "limit", "past", "zone", "status", "live", "type",
                             "broadcast", "%ED%A0%80"]),
            st.sampled_from(PATH_PARTS + ["-1", "1e3", "true"]), max_size=3)).items())
    headers = {k: v for k, v in data.draw(st.dictionaries(
        st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES), max_size=3)).items()}
    if data.draw(st.booleans(), label="admin"):
        headers["Authorization"] = f"Bearer {TOKEN}"
    headers.setdefault("Content-Type", data.draw(st.sampled_from(
        ["application/json", "text/plain", "multipart/form-data; boundary=b", "text/csv", ""])))
    body = data.draw(bodies, label="body") if route.method in ("POST", "PUT", "PATCH") else None
    status = loop.run_until_complete(call(client, route.method, url, body, headers))
    assert status < 500, (route.method, url, headers, body[:300] if body else body)


@pytest.mark.parametrize("fragment", ["[" * 5000 + "]" * 5000, "1" * 5001, '"\\udc00"', "NaN",
                                      "1e999"])
@pytest.mark.parametrize("route", ["/api/v1/live/offer", "/api/v1/session", "/api/v1/users",
                                   "/api/v1/zones", "/api/v1/broadcasts"])
def test_the_issues_examples_are_clear_4xx(app, route, fragment):
    loop, client, _ = app
    for template in ('{"username": @, "password": "x", "zones": ["thon"], "sdp": "v=0"}',
                     '{"id": "z1", "name": @, "zones": ["thon"], "level": "normal",'
                     ' "source": {"kind": "tone", "seconds": @}}', "@"):
        body = template.replace("@", fragment).encode()
        status = loop.run_until_complete(call(client, "POST", route, body, {
            "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}))
        assert 400 <= status < 500, (route, template[:40], status)


@pytest.mark.parametrize("br", ["\r\n", "\n", "\r", "\u0085", "\u2028", "\u2029"])
def test_a_zone_named_with_line_breaks_serves_a_clean_public_sdp(app, br):
    loop, client, _ = app
    adm = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    zid = "z" + "-".join(str(ord(c)) for c in br)
    name = f"Xã{br}c=IN IP4 6.6.6.6{br}m=audio 9 RTP/AVP 0"

    async def go() -> str:
        body = json.dumps({"id": zid, "name": name, "parent": "xa",
                           "multicast": "239.9.9.9:5004"}).encode()
        r = await client.post("/api/v1/zones", data=body, headers=adm)
        assert r.status == 201, await r.text()
        r = await client.get(f"/api/v1/zones/{zid}/sdp")
        assert r.status == 200
        return await r.text()
    sdp = loop.run_until_complete(go())
    lines = sdp.splitlines()
    assert [ln[:2] for ln in lines] == ["v=", "o=", "s=", "i=", "c=", "t=", "m=", "a=", "a=",
                                        "a=", "a="], sdp
    assert "239.9.9.9" in sdp and "6.6.6.6" in lines[3]
