"""Builds CAP 1.2 messages (and signs them) for the alert tests, unit and integration."""
from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import escape

NS = "urn:oasis:names:tc:emergency:cap:1.2"


def cap(identifier: str = "VN-KTTV-2025-0001", sender: str = "kttv@nchmf.gov.vn",
        sent: str = "2025-11-26T08:00:00+07:00", status: str = "Actual", msg_type: str = "Alert",
        scope: str = "Public", references: str = "", infos: list[str] | None = None,
        ns: str = NS) -> bytes:
    refs = f"<references>{escape(references)}</references>" if references else ""
    body = "".join(infos if infos is not None else [info()])
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<alert xmlns="{ns}">'
            f"<identifier>{identifier}</identifier><sender>{sender}</sender><sent>{sent}</sent>"
            f"<status>{status}</status><msgType>{msg_type}</msgType><scope>{scope}</scope>"
            f"{refs}{body}</alert>").encode()


def info(language: str = "vi-VN", event: str = "Bão số 13",
         urgency: str = "Immediate", severity: str = "Severe", certainty: str = "Observed",
         headline: str = "Cảnh báo bão số 13", description: str = "Bão mạnh cấp 12 đổ bộ",
         instruction: str = "Người dân vào nơi trú ẩn an toàn",
         expires: str | None = "2025-11-26T20:00:00+07:00", risk: str | None = "4",
         areas: list[str] | None = None, resources: str = "", risk_param: str = "capDoRuiRo") -> str:
    param = (f"<parameter><valueName>{risk_param}</valueName><value>{risk}</value></parameter>"
             if risk is not None else "")
    exp = f"<expires>{expires}</expires>" if expires else ""
    return (f"<info><language>{language}</language><category>Met</category><event>{event}</event>"
            f"<urgency>{urgency}</urgency><severity>{severity}</severity>"
            f"<certainty>{certainty}</certainty>{exp}<headline>{headline}</headline>"
            f"<description>{description}</description><instruction>{instruction}</instruction>"
            f"{param}{resources}{''.join(areas if areas is not None else [geocode_area('21598')])}"
            "</info>")


def geocode_area(*codes: str, desc: str = "Xã Nhơn Lý") -> str:
    g = "".join(f"<geocode><valueName>MA_DVHC</valueName><value>{c}</value></geocode>" for c in codes)
    return f"<area><areaDesc>{desc}</areaDesc>{g}</area>"


def polygon_area(points: list[tuple[float, float]], desc: str = "Vùng nguy hiểm") -> str:
    ring = " ".join(f"{lat},{lon}" for lat, lon in points + [points[0]])
    return f"<area><areaDesc>{desc}</areaDesc><polygon>{ring}</polygon></area>"


def circle_area(lat: float, lon: float, km: float, desc: str = "Vùng tâm chấn") -> str:
    return f"<area><areaDesc>{desc}</areaDesc><circle>{lat},{lon} {km}</circle></area>"


def resource(uri: str, digest: str | None = None, mime: str = "audio/wav") -> str:
    d = f"<digest>{digest}</digest>" if digest else ""
    return (f"<resource><resourceDesc>Bản tin</resourceDesc><mimeType>{mime}</mimeType>"
            f"<uri>{uri}</uri>{d}</resource>")


# ------------------------------------------------------------------ keys and signatures
def make_key_and_cert(common_name: str = "KTTV test authority"):
    """An RSA key and its self-signed certificate, both PEM bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def sign(xml: bytes, key_pem: bytes, cert_pem: bytes | None = None) -> bytes:
    """Enveloped XML-DSig over the whole alert (signxml), the certificate embedded if given."""
    from lxml import etree
    from signxml import XMLSigner
    root = etree.fromstring(xml)
    signed = XMLSigner(c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#").sign(
        root, key=key_pem, cert=cert_pem)
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
