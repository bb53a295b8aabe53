"""Adding, moving and retiring receivers touches only the zones concerned: in the service layer
(no full read of the receivers table, no tree rebuild) and in the server's secret cache (nothing
decrypted again). What the engine does with them: tests/unit/test_rtp_output.py and
tests/integration/test_rtp_output_fanout.py. The tests that need the database's thread or a
server: tests/integration/test_control_service.py."""
from __future__ import annotations

import pytest

from control.errors import DomainError
from control.http import status_of


async def test_bulk_is_all_or_nothing(state):
    st = state
    await st.provision_receivers([{"zone": "b", "id": "taken"}])
    n = len(await st.db.receivers())
    cases = [
        ([{"zone": "b", "id": "x1"}, {"zone": "nowhere", "id": "x2"}], 404, "unknown_zone", "x2"),
        ([{"zone": "b", "id": "x1"}, {"zone": "b", "id": "x1"}], 422, "duplicate_ids", "x1"),
        ([{"zone": "b", "id": "x1"}, {"zone": "b", "id": "taken"}], 409, "receiver_exists", "taken"),
        ([{"zone": "b", "id": "x1"}, {"zone": "b", "id": "x2", "address": "127.0.0.1:5/30"}],
         422, "invalid_address", "x2"),
    ]
    for rows, status, code, named in cases:
        with pytest.raises(DomainError) as e:
            await st.provision_receivers(rows)
        assert (status_of(e.value), e.value.code) == (status, code), rows
        assert named in e.value.message
        assert len(await st.db.receivers()) == n  # nothing written
    assert await st.db.receiver("x1") is None


