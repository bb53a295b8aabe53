"""An alert pushed to an origin that does not hold the leadership lease (issue 19): refused with
503 naming the leader and its API address, nothing stored or aired there (two real `loa serve
--role origin` processes and a real redis-server on loopback). The leader takes the same push
past that gate (here refused later for its missing signature: 401, as on a single node)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_control_cluster import cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

CAP = b"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>t-1</identifier>
<sender>kttv@example.vn</sender><sent>2026-01-01T00:00:00+07:00</sent><status>Actual</status>
<msgType>Alert</msgType><scope>Public</scope></alert>"""
TOKEN = "cluster-alerts-admin-token-0123456789"
ENV = {"LOA_ADMIN_TOKEN": TOKEN}


def push(url: str) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/api/v1/alerts", data=CAP, method="POST",
                                 headers={"Content-Type": "application/cap+xml",
                                          "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_an_alert_pushed_to_a_non_leader_is_refused_naming_the_leader(cluster):  # noqa: F811
    a = cluster("origin-a", "origin", ENV)
    b = cluster("origin-b", "origin", ENV)
    wait_for("b is up and not leading", lambda: b.get("/api/v1/health")[1]["cluster"]
             ["leader"] is False, 10)
    assert a.get("/api/v1/health")[1]["cluster"]["leader"] is True
    st, body = push(b.url)
    assert st == 503, body
    err = body.get("error", body)
    assert err["code"] == "not_leader" and err["leader"] == "origin-a", body
    assert err["http"] == a.url.removeprefix("http://"), body
    req = urllib.request.Request(b.url + "/api/v1/alerts",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["alerts"] == []
    # the leader takes it past the leadership gate (then refused as unsigned, as one node)
    st, body = push(a.url)
    assert st == 401, body
