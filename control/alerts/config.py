"""The settings-file shapes of alert intake (`[[alert_authorities]]`, `[[alert_feeds]]`, the level
table). A leaf: control/settings.py imports these, nothing here imports control."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

CapSeverity = Literal["Extreme", "Severe", "Moderate", "Minor", "Unknown"]
CapUrgency = Literal["Immediate", "Expected", "Future", "Past", "Unknown"]
CapCertainty = Literal["Observed", "Likely", "Possible", "Unlikely", "Unknown"]


class AlertAuthorityConfig(BaseModel):
    """An authority whose signed messages may air: its certificate (PEM file) is the only key
    a signature is checked against. `senders`: the CAP <sender> ids it sends for; a sender id
    an authority lists is its own (no other authority, feed or account may use it), and an
    authority that lists senders may send for no other. `accounts`: the usernames that push
    for it unsigned (only with alerts_allow_unsigned_push)."""
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    name: str = ""
    certificate: Path
    feed: str | None = None  # a feed URL polled on this authority's behalf
    senders: list[str] = Field(default_factory=list, max_length=1000)
    accounts: list[str] = Field(default_factory=list, max_length=1000)


class AlertFeedConfig(BaseModel):
    """A pull feed: an Atom/RSS index whose entries link to CAP messages, or a URL that returns
    one CAP message. `authority`: only that authority's signature is accepted from it."""
    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://")
    id: str = ""
    authority: str | None = None
    interval_s: float = Field(60.0, ge=0.2, le=86_400)
    timeout_s: float = Field(10.0, gt=0, le=300)


class AlertLevelRule(BaseModel):
    """One row of the level table: every condition given must hold; the first row that holds
    decides. `risk_min`: Vietnam's disaster risk level (1-5, QĐ 18/2021/QĐ-TTg)."""
    level: Literal["emergency", "priority", "normal"]
    risk_min: int | None = Field(None, ge=1, le=5)
    severity: list[CapSeverity] | None = None
    urgency: list[CapUrgency] | None = None
    certainty: list[CapCertainty] | None = None


DEFAULT_LEVEL_RULES: list[AlertLevelRule] = [
    AlertLevelRule(level="emergency", risk_min=3),
    AlertLevelRule(level="emergency", risk_min=None, severity=["Extreme", "Severe"],
                   urgency=["Immediate", "Expected"], certainty=["Observed", "Likely"]),
    AlertLevelRule(level="priority", risk_min=None),
]
