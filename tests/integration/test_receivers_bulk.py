"""`POST /api/v1/receivers/bulk` on a real `loa serve`: thousands at once, all or nothing, the
engine's fan-out gets every destination, only admins may, and the audit log says how many."""
from __future__ import annotations

import time

import pytest

from tests.integration.conftest import free_udp_ports, wait_for

pytestmark = pytest.mark.integration

ADMIN = "bulk-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def toml(port: int) -> str:
    return f"""
[[zones]]
id = "xa"
unicast = ["127.0.0.1:{port}"]

[[zones]]
id = "thon-1"
parent = "xa"

[[zones]]
id = "thon-2"
parent = "xa"
"""


@pytest.fixture
def server(serve):
    return serve(toml(free_udp_ports(1)[0]), {"LOA_ADMIN_TOKEN": ADMIN})


def rows(n: int, start: int = 0, port: int = 9) -> list[dict]:
    return [{"id": f"rx-{i:05d}", "zone": "thon-1" if i % 2 else "thon-2",
             "address": f"127.0.{i // 250}.{i % 250 + 1}:{port}", "name": f"cụm loa {i}"}
            for i in range(start, start + n)]


def destinations(server) -> int:
    return server.request("GET", "/api/v1/health")[1]["fanout"]["destinations"]


def count(server) -> int:
    return len(server.request("GET", "/api/v1/receivers", headers=AUTH)[1]["receivers"])


def test_two_thousand_in_one_call(server):
    static = destinations(server)
    # a programme on air while they are added
    st, b = server.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa"], "source": {"kind": "tone", "seconds": 60}}, headers=AUTH)
    assert st == 201, b
    want = rows(2000)
    t0 = time.monotonic()
    st, out = server.request("POST", "/api/v1/receivers/bulk", {"receivers": want}, headers=AUTH,
                             timeout=30)
    took = time.monotonic() - t0
    assert st == 201, out
    got = out["receivers"]
    assert [r["id"] for r in got] == [r["id"] for r in want]  # in the order given
    assert all(r["zone"] == w["zone"] and r["address"] == w["address"] and r["name"] == w["name"]
               for r, w in zip(got, want))
    assert all(len(r["secret"]) >= 40 for r in got) and len({r["secret"] for r in got}) == 2000
    assert all("secret_enc" not in r and r["status"] == "provisioned" for r in got)
    assert took < 20, took  # generous: a loaded CI box; the benchmark measures it properly
    assert count(server) == 2000
    st, one = server.request("GET", "/api/v1/receivers/rx-00007", headers=AUTH)
    assert st == 200 and "secret" not in one and one["zone"] == "thon-1"
    # the engine: every address is a destination of its zone, and the fan-out has them all
    st, z = server.request("GET", "/api/v1/zones/thon-1", headers=AUTH)
    assert len(z["unicast"]) == 1000 and "127.0.0.8:9" in z["unicast"]
    wait_for("the fan-out to have every destination", lambda: destinations(server) == static + 2000,
             timeout=10)
    st, cur = server.request("GET", f"/api/v1/broadcasts/{b['id']}", headers=AUTH)
    assert cur["state"] == "playing"
    # a second batch adds to the same zones; a single provisioning still works too
    st, out2 = server.request("POST", "/api/v1/receivers/bulk", {"receivers": rows(500, 2000)},
                              headers=AUTH, timeout=30)
    assert st == 201 and len(out2["receivers"]) == 500
    st, single = server.request("POST", "/api/v1/receivers", {"zone": "xa",
                                                             "address": "127.0.99.1:9"},
                                headers=AUTH)
    assert st == 201 and single["secret"]
    wait_for("the fan-out to have the new ones", lambda: destinations(server) == static + 2501,
             timeout=10)
    # moving and retiring reach the engine too
    assert server.request("POST", "/api/v1/receivers/rx-00001/move", {"zone": "thon-2"},
                          headers=AUTH)[0] == 200
    assert server.request("POST", "/api/v1/receivers/rx-00003/retire", headers=AUTH)[0] == 200
    st, z1 = server.request("GET", "/api/v1/zones/thon-1", headers=AUTH)
    st, z2 = server.request("GET", "/api/v1/zones/thon-2", headers=AUTH)
    assert "127.0.0.2:9" in z2["unicast"] and "127.0.0.2:9" not in z1["unicast"]
    assert "127.0.0.4:9" not in z1["unicast"]
    wait_for("the retired one to be gone", lambda: destinations(server) == static + 2500,
             timeout=10)
    # one audit entry per call, with the count and the zones, never a secret
    st, aud = server.request("GET", "/api/v1/audit?action=receivers.write&limit=100", headers=AUTH)
    bulk = [a for a in aud["entries"] if a["target"].endswith(" receivers")]
    assert [(a["status"], a["detail"]["count"], a["detail"]["zones"]) for a in bulk] == [
        (201, 2000, ["thon-1", "thon-2"]), (201, 500, ["thon-1", "thon-2"])]
    assert "secret" not in str(aud)
    assert "Traceback" not in server.output()


def test_all_or_nothing(server):
    assert server.request("POST", "/api/v1/receivers", {"zone": "xa", "id": "taken"},
                          headers=AUTH)[0] == 201
    good = rows(300)

    def post(body):
        return server.request("POST", "/api/v1/receivers/bulk", body, headers=AUTH)
    # a bad row anywhere: 422 naming it, nothing written
    bad = good[:150] + [{"zone": "thon-1", "address": "not-an-address"}] + good[150:]
    st, err = post({"receivers": bad})
    assert st == 422 and err["error"]["code"] == "invalid_request"
    assert err["error"]["problems"][0]["field"] == "receivers.150.address"
    # an unknown zone: 404 naming the zone and the receivers that named it
    st, err = post({"receivers": good + [{"zone": "nowhere", "id": "lost-1"}]})
    assert st == 404 and err["error"]["code"] == "unknown_zone"
    assert err["error"]["zones"] == ["nowhere"] and err["error"]["ids"] == ["lost-1"]
    assert "nowhere" in err["error"]["message"] and "nothing was written" in err["error"]["message"]
    # an id given twice, or one that exists already
    st, err = post({"receivers": good + [dict(good[5], zone="thon-2")]})
    assert st == 422 and err["error"]["code"] == "duplicate_ids" and err["error"]["ids"] == ["rx-00005"]
    st, err = post({"receivers": good + [{"zone": "xa", "id": "taken"}]})
    assert st == 409 and err["error"]["code"] == "receiver_exists" and err["error"]["ids"] == ["taken"]
    # too many in one request: a clear 413 with the limit
    st, err = post({"receivers": [{"zone": "xa"}] * 10_001})
    assert st == 413 and err["error"]["code"] == "too_many_receivers"
    assert err["error"]["limit"] == 10_000 and "10000" in err["error"]["message"]
    # malformed bodies
    for body in ({"receivers": []}, {"receivers": "x"}, {"rx": []}, [1, 2],
                 {"receivers": [{"zone": "xa"}], "extra": 1}, {"receivers": [7]}):
        st, err = post(body)
        assert st == 422 and err["error"]["message"], (body, err)
    st, err = server.request("POST", "/api/v1/receivers/bulk", raw=b"{nope", headers=AUTH)
    assert st == 400 and err["error"]["code"] == "malformed_json"
    assert count(server) == 1  # only "taken": every failed call wrote nothing
    assert server.request("GET", "/api/v1/receivers/rx-00000", headers=AUTH)[0] == 404
    # and the same rows go in fine once they are right
    st, out = post({"receivers": good})
    assert st == 201 and len(out["receivers"]) == 300 and count(server) == 301
    assert "Traceback" not in server.output()


def test_only_admins_may(server):
    hdr = {}
    for name, role, scope in [("viewer", "viewer", []), ("op", "operator", ["thon-1"]),
                              ("off", "official", ["thon-1"])]:
        st, u = server.request("POST", "/api/v1/users", {"username": name, "role": role,
                                                         "scope": scope}, headers=AUTH)
        assert st == 201, u
        st, t = server.request("POST", f"/api/v1/users/{u['id']}/tokens", {}, headers=AUTH)
        hdr[name] = {"Authorization": f"Bearer {t['token']}"}
    body = {"receivers": rows(3)}
    for name, h in hdr.items():
        st, err = server.request("POST", "/api/v1/receivers/bulk", body, headers=h)
        assert st == 403 and err["error"]["code"] == "forbidden", (name, err)
    st, err = server.request("POST", "/api/v1/receivers/bulk", body)
    assert st == 401
    assert count(server) == 0
    st, aud = server.request("GET", "/api/v1/audit?action=receivers.write", headers=AUTH)
    assert sorted((a["actor"], a["status"]) for a in aud["entries"]) == [
        ("anonymous", 401), ("off", 403), ("op", 403), ("viewer", 403)]
    # the OpenAPI document describes the route, with its limit
    st, doc = server.request("GET", "/api/v1/openapi.json")
    op = doc["paths"]["/api/v1/receivers/bulk"]["post"]
    assert op["x-loa-action"] == "receivers.write" and "201" in op["responses"]
    assert "413" in op["responses"]
    schema = doc["components"]["schemas"]["ReceiverBulk"]["properties"]["receivers"]
    assert schema["maxItems"] == 10_000 and schema["minItems"] == 1
