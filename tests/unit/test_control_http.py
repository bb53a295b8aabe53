"""control.http: the error shape, and the Retry-After a refusal for load carries."""
from __future__ import annotations

import json

import pytest

from control.http import error_response


@pytest.mark.parametrize("status,extra,header", [
    (429, {"retry_after_s": 12.3}, "13"),
    (429, {"retry_after_s": 0.2}, "1"),
    (429, {}, "1"),
    (503, {"retry_after_s": 5}, "5"),
    (503, {}, None),
    (422, {"retry_after_s": 5}, None),
    (429, {"retry_after_s": "soon"}, "1"),
    (429, {"retry_after_s": True}, "1"),
])
def test_refusals_for_load_say_when_to_come_back(status, extra, header):
    r = error_response(status, "too_many_starts", "slow down", **extra)
    assert r.status == status
    assert r.headers.get("Retry-After") == header
    body = json.loads(r.body)
    assert body["error"]["code"] == "too_many_starts" and body["error"]["message"] == "slow down"
    for k, v in extra.items():
        assert body["error"][k] == v
