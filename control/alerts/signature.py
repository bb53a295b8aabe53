"""Is this CAP message from a registered authority? Enveloped XML-DSig checked with `signxml`
against the certificates registered in the settings (`[[alert_authorities]]`), never against a
certificate the message carries: an embedded certificate proves the bytes were not changed since
somebody signed them, not who that somebody was.

Sans-IO apart from reading the PEM files once (`Authorities.load`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from control.alerts.cap import NS, CapAlert, parse
from control.errors import Forbidden


class SignatureError(Forbidden):
    """Signed, but not by a registered authority, or not over the whole alert (403)."""


class Unsigned(SignatureError):
    """No signature at all (401 on push: say who you are)."""


class SenderNotAllowed(SignatureError):
    """Authentic, but for a CAP sender id that is not this authority's (403)."""


@dataclass(frozen=True)
class Authority:
    id: str
    name: str
    certificate_pem: bytes
    feed: str | None = None
    senders: tuple[str, ...] = ()    # the CAP sender ids it sends for (none: it sends for none)
    accounts: tuple[str, ...] = ()   # usernames pushing for it unsigned


class Authorities:
    def __init__(self, items: Iterable[Authority] = ()) -> None:
        self.items = {a.id: a for a in items}
        #: sender id -> the authority that listed it (a sender listed twice: ValueError)
        self.owner: dict[str, str] = {}
        for a in self.items.values():
            for s in a.senders:
                if self.owner.setdefault(s, a.id) != a.id:
                    raise ValueError(f"CAP sender {s!r} is listed by two alert authorities "
                                     f"({self.owner[s]} and {a.id})")

    def for_account(self, username: str) -> str | None:
        """The authority an account pushes for (its `accounts` list), or None."""
        return next((a.id for a in self.items.values() if username in a.accounts), None)

    def check_sender(self, alert: CapAlert, authority: str | None) -> None:
        """May `authority` (the signer, the feed's or the pushing account's; None: an account no
        authority lists) send this alert? Its sender must be one `authority` lists (a sender id
        is one authority's alone), and an Update/Cancel may name only alerts of that
        authority's senders (SenderNotAllowed otherwise, saying which rule and what to fix)."""
        sender = alert.sender
        owner = self.owner.get(sender)
        auth = self.items.get(authority) if authority is not None else None
        if authority is None or auth is None:
            raise SenderNotAllowed(
                f"this account pushes for no alert authority (list it in an authority's "
                f"accounts): it may not send for CAP sender {sender!r}", code="sender_not_allowed")
        mine = (f" (its senders: {', '.join(auth.senders[:10])})" if auth.senders
                else " (it lists no senders)")
        if owner != authority:
            whose = (f"authority {owner}'s" if owner is not None
                     else "listed by no alert authority")
            raise SenderNotAllowed(f"authority {authority} may not send for CAP sender "
                                   f"{sender!r}, {whose}{mine}", code="sender_not_allowed")
        for ref_sender, ident, _sent in alert.references:
            if self.owner.get(ref_sender) != authority:
                raise SenderNotAllowed(
                    f"a {alert.msg_type} from authority {authority} names alert {ident!r} of "
                    f"CAP sender {ref_sender!r}, not one of its own senders{mine}",
                    code="reference_not_allowed")

    @classmethod
    def load(cls, configs: Iterable) -> Authorities:
        """From settings' `alert_authorities` (id, name, certificate path, feed); a missing or
        unreadable certificate is a configuration error raised at start."""
        from cryptography import x509
        out = []
        for c in configs:
            pem = Path(c.certificate).read_bytes()
            x509.load_pem_x509_certificate(pem)  # a certificate, not a key or junk
            out.append(Authority(c.id, c.name or c.id, pem, c.feed, tuple(c.senders),
                                 tuple(c.accounts)))
        return cls(out)

    def verify(self, data: bytes, max_bytes: int, only: str | None = None) -> tuple[CapAlert, Authority]:
        """The alert as signed, and who signed it. `data` is parsed (hardened) before any
        signature code sees it; what is returned is parsed from the *signed* element that
        signxml hands back, so nothing outside the signature can be smuggled in."""
        alert = parse(data, max_bytes)  # refuses hostile XML before lxml ever reads it
        if not alert.signed:
            raise Unsigned("the message carries no XML signature", code="unsigned_alert")
        candidates = [self.items[only]] if only in self.items else (
            [] if only is not None else list(self.items.values()))
        if not candidates:
            raise SignatureError("no registered authority to check the signature against",
                                 code="unknown_authority")
        from lxml import etree
        from signxml import InvalidInput, XMLVerifier
        from signxml.exceptions import InvalidSignature
        problems = []
        for auth in candidates:
            try:
                res = XMLVerifier().verify(data, x509_cert=auth.certificate_pem.decode(),
                                           expect_references=1)
            except (InvalidSignature, InvalidInput) as e:
                problems.append(f"{auth.id}: {e}")
                continue
            except Exception as e:  # signxml/lxml on malformed signature parts
                problems.append(f"{auth.id}: {type(e).__name__}")
                continue
            assert not isinstance(res, list)  # expect_references=1: one result
            signed = res.signed_xml
            if signed is None or signed.tag != f"{{{NS}}}alert" or signed.getparent() is not None:
                raise SignatureError("the signature does not cover the whole alert",
                                     code="bad_signature")
            # signxml hands back the alert without its ds:Signature
            signed_alert = dataclasses.replace(parse(etree.tostring(signed), max_bytes), signed=True)
            return signed_alert, auth
        raise SignatureError("the signature does not verify with any registered authority's "
                             "certificate", code="bad_signature", checked=problems[:5])
