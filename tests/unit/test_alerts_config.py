"""control/alerts/config.py: an alert authority's settings say which CAP senders are its own; one
that lists none is refused when the settings load, with what to add."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from control.alerts.config import AlertAuthorityConfig
from control.settings import Settings


def test_an_authority_must_list_its_senders():
    with pytest.raises(ValidationError) as e:
        Settings(alert_authorities=[{"id": "kttv", "certificate": "/etc/loa/kttv.pem"}])
    msg = str(e.value)
    assert "alert authority 'kttv' lists no CAP sender ids" in msg and "senders = " in msg
    with pytest.raises(ValidationError, match="lists no CAP sender ids"):
        AlertAuthorityConfig(id="pctt", certificate="/x.pem", senders=["  "])
    ok = AlertAuthorityConfig(id="kttv", certificate="/x.pem", senders=["kttv@nchmf.gov.vn"])
    assert ok.senders == ["kttv@nchmf.gov.vn"]
