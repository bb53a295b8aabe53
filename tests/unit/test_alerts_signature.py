"""control/alerts/signature.py: only the registered authority's key makes a message authentic."""
from __future__ import annotations

import pytest

from control.alerts.signature import Authorities, Authority, SignatureError, Unsigned
from tests.cap_build import cap, make_key_and_cert, sign

KEY, CERT = make_key_and_cert("KTTV")
OTHER_KEY, OTHER_CERT = make_key_and_cert("KTTV")  # same name, another key
BOOK = Authorities([Authority("kttv", "Trung tâm KTTV", CERT)])


def test_valid_signature_by_the_registered_key():
    alert, who = BOOK.verify(sign(cap(), KEY), 1 << 20)
    assert who.id == "kttv" and alert.identifier == "VN-KTTV-2025-0001" and alert.signed


def test_valid_with_embedded_registered_certificate_too():
    assert BOOK.verify(sign(cap(), KEY, CERT), 1 << 20)[1].id == "kttv"


def test_wrong_key_is_refused():
    with pytest.raises(SignatureError) as e:
        BOOK.verify(sign(cap(), OTHER_KEY), 1 << 20)
    assert e.value.code == "bad_signature"


def test_an_embedded_certificate_proves_nothing_by_itself():
    # signed correctly with the other key and carrying its certificate: integrity, not origin
    signed = sign(cap(), OTHER_KEY, OTHER_CERT)
    with pytest.raises(SignatureError):
        BOOK.verify(signed, 1 << 20)
    assert Authorities([Authority("x", "x", OTHER_CERT)]).verify(signed, 1 << 20)[1].id == "x"


@pytest.mark.parametrize("old,new", [
    (b"<status>Actual</status>", b"<status>Test</status>"),
    (b"21598", b"21599"),
    (b"B\xc3\xa3o s\xe1\xbb\x91 13", b"B\xc3\xa3o s\xe1\xbb\x91 14"),
])
def test_tampered_after_signing_is_refused(old, new):
    signed = sign(cap(), KEY, CERT)
    assert old in signed
    with pytest.raises(SignatureError):
        BOOK.verify(signed.replace(old, new, 1), 1 << 20)


def test_unsigned_is_its_own_error():
    with pytest.raises(Unsigned):
        BOOK.verify(cap(), 1 << 20)


def test_a_feed_bound_to_an_authority_accepts_only_that_key():
    both = Authorities([Authority("kttv", "", CERT), Authority("other", "", OTHER_CERT)])
    signed = sign(cap(), OTHER_KEY)
    assert both.verify(signed, 1 << 20)[1].id == "other"
    with pytest.raises(SignatureError):
        both.verify(signed, 1 << 20, only="kttv")


def test_hostile_xml_is_refused_before_signature_code():
    from control.errors import Invalid
    with pytest.raises(Invalid) as e:
        BOOK.verify(b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>', 1 << 20)
    assert e.value.code == "forbidden_xml"


# ------------------------------------------------------------------ the sender is the authority's
def _senders_book() -> Authorities:
    return Authorities([
        Authority("kttv", "KTTV", CERT, senders=("kttv@nchmf.gov.vn", "dai-ktt-nam-bo")),
        Authority("pctt", "PCTT", OTHER_CERT, senders=("bch-pctt@gialai",),
                  accounts=("pctt-push",)),
        Authority("open", "no list", OTHER_CERT)])


@pytest.mark.parametrize("authority,sender,ok", [
    ("kttv", "kttv@nchmf.gov.vn", True),
    ("kttv", "dai-ktt-nam-bo", True),
    ("kttv", "bch-pctt@gialai", False),     # another authority's sender
    ("kttv", "someone-unlisted", False),    # an authority with a list sends for it only
    ("pctt", "kttv@nchmf.gov.vn", False),
    ("open", "someone-unlisted", False),    # no list: it sends for no one (was: any unclaimed)
    ("open", "kttv@nchmf.gov.vn", False),   # a claimed sender stays its owner's
    ("pctt", "someone-unlisted", False),
    (None, "someone-unlisted", False),      # an account no authority lists (unsigned push)
    (None, "bch-pctt@gialai", False),
    ("nobody", "kttv@nchmf.gov.vn", False),  # not a registered authority
])
def test_a_sender_id_is_its_authoritys_alone(authority, sender, ok):
    from control.alerts.cap import parse
    from control.alerts.signature import SenderNotAllowed
    alert = parse(cap(sender=sender), 1 << 20)
    book = _senders_book()
    if ok:
        book.check_sender(alert, authority)
    else:
        with pytest.raises(SenderNotAllowed) as e:
            book.check_sender(alert, authority)
        assert e.value.code == "sender_not_allowed" and sender in e.value.message


def test_accounts_push_for_the_authority_that_lists_them_and_a_sender_has_one_owner():
    book = _senders_book()
    assert book.for_account("pctt-push") == "pctt" and book.for_account("other") is None
    with pytest.raises(ValueError, match="two alert authorities"):
        Authorities([Authority("a", "", CERT, senders=("x",)),
                      Authority("b", "", OTHER_CERT, senders=("x",))])


def test_signed_by_the_right_key_for_the_wrong_sender_is_refused_by_the_intake_rule():
    book = _senders_book()
    signed = sign(cap(sender="bch-pctt@gialai"), KEY)   # KTTV's key, PCTT's sender id
    alert, auth = book.verify(signed, 1 << 20, only="kttv")
    assert auth.id == "kttv"
    from control.alerts.signature import SenderNotAllowed
    with pytest.raises(SenderNotAllowed):
        book.check_sender(alert, auth.id)


@pytest.mark.parametrize("authority,references,code", [
    ("kttv", "kttv@nchmf.gov.vn,A1,2025-11-26T08:00:00+07:00", None),
    ("kttv", "kttv@nchmf.gov.vn,A1,2025-11-26T08:00:00+07:00 "
             "dai-ktt-nam-bo,A2,2025-11-26T08:00:00+07:00", None),   # two of its own senders
    ("kttv", "bch-pctt@gialai,P1,2025-11-26T08:00:00+07:00", "reference_not_allowed"),
    ("kttv", "kttv@nchmf.gov.vn,A1,2025-11-26T08:00:00+07:00 "
             "someone-unlisted,X,2025-11-26T08:00:00+07:00", "reference_not_allowed"),
])
@pytest.mark.parametrize("msg_type", ["Update", "Cancel"])
def test_an_update_or_cancel_names_only_alerts_of_its_own_authority(authority, references,
                                                                     code, msg_type):
    from control.alerts.cap import parse
    from control.alerts.signature import SenderNotAllowed
    alert = parse(cap(sender="kttv@nchmf.gov.vn", msg_type=msg_type, references=references,
                      sent="2025-11-26T09:00:00+07:00"), 1 << 20)
    book = _senders_book()
    if code is None:
        book.check_sender(alert, authority)
    else:
        with pytest.raises(SenderNotAllowed) as e:
            book.check_sender(alert, authority)
        assert e.value.code == code
        assert references.split()[-1].split(",")[0] in e.value.message   # names whose it is
