"""The settings-file shapes of alert intake (`[[alert_authorities]]`, `[[alert_feeds]]`, the level
table). A leaf: control/settings.py imports these, nothing here imports control."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

CapSeverity = Literal["Extreme", "Severe", "Moderate", "Minor", "Unknown"]
CapUrgency = Literal["Immediate", "Expected", "Future", "Past", "Unknown"]
CapCertainty = Literal["Observed", "Likely", "Possible", "Unlikely", "Unknown"]


class AlertAuthorityConfig(BaseModel):
    """An authority whose signed messages may air: its certificate (PEM file) is the only key
    a signature is checked against. `senders` (at least one): the CAP <sender> ids it sends
    for; a sender id is its authority's alone (no other authority, feed or account may use
    it), an authority sends for no other, and its Update/Cancel may name only alerts of its own
    senders. `accounts`: the usernames that push for it unsigned (only with
    alerts_allow_unsigned_push)."""
    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    name: str = ""
    certificate: Path
    feed: str | None = None  # a feed URL polled on this authority's behalf
    senders: list[str] = Field(default_factory=list, max_length=1000)
    accounts: list[str] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _has_senders(self) -> AlertAuthorityConfig:
        if not [s for s in self.senders if s.strip()]:
            raise ValueError(
                f"alert authority {self.id!r} lists no CAP sender ids: add senders = "
                f"[\"...\"] (the <sender> of its messages) to its [[alert_authorities]] entry; "
                "a message airs only for a sender its signing authority lists")
        return self


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
