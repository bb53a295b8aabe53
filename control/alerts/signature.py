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


@dataclass(frozen=True)
class Authority:
    id: str
    name: str
    certificate_pem: bytes
    feed: str | None = None


class Authorities:
    def __init__(self, items: Iterable[Authority] = ()) -> None:
        self.items = {a.id: a for a in items}

    @classmethod
    def load(cls, configs: Iterable) -> Authorities:
        """From settings' `alert_authorities` (id, name, certificate path, feed); a missing or
        unreadable certificate is a configuration error raised at start."""
        from cryptography import x509
        out = []
        for c in configs:
            pem = Path(c.certificate).read_bytes()
            x509.load_pem_x509_certificate(pem)  # a certificate, not a key or junk
            out.append(Authority(c.id, c.name or c.id, pem, c.feed))
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
