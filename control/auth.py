"""Credentials and secrets: scrypt passwords, API tokens, the login throttle, receiver secrets
(the one generator, and AES-GCM at rest).

Sans-IO: nothing here touches the network or the database. Who may do what is decided in
control/policy.py; control/access.py looks callers up and asks it.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# ----------------------------------------------------------------------------- secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str) -> str:
    """scrypt (memory-hard: 16 MiB per guess), self-describing so parameters can grow later."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                        maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        # same work as a real check so a missing user is not told apart by timing
        hash_password(password)
        return False
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(_unb64(dk)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(dk))


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def new_receiver_secret() -> bytes:
    """The one generator of receiver secrets: 256 random bits whose base64 form never starts
    with "-" (`--secret -x...` would read as an option)."""
    secret = secrets.token_bytes(32)
    while _b64(secret)[0] == "-":
        secret = secrets.token_bytes(32)
    return secret


def b64(b: bytes) -> str:
    """How a secret is shown (once) to whoever provisions the receiver."""
    return _b64(b)


def token_hash(secret: str) -> str:
    """Tokens carry 256 random bits, so one SHA-256 is enough (no KDF needed against guessing)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token id, full token to hand out once, hash to store). Format: loa_<id>_<secret>."""
    tid = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return tid, f"loa_{tid}_{secret}", token_hash(secret)


def parse_token(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "loa" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def constant_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def is_loopback_host(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- login throttle

@dataclass
class LoginThrottle:
    """At most `limit` failed logins per `window_s` per client address and per username."""
    limit: int = 5
    window_s: float = 300.0
    _fails: dict[str, deque] = field(default_factory=dict)

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        wait = 0.0
        for k in keys:
            q = self._fails.get(k)
            if not q:
                continue
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                wait = max(wait, q[0] + self.window_s - now)
        return wait

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for k in keys:
            self._fails.setdefault(k, deque()).append(now)
        if len(self._fails) > 10_000:  # bounded memory under a spray of names
            for k in list(self._fails)[:5000]:
                del self._fails[k]

    def succeeded(self, keys: list[str]) -> None:
        for k in keys:
            self._fails.pop(k, None)


# ----------------------------------------------------------------------------- receiver secrets

class SecretBox:
    """Receiver secrets at rest: AES-256-GCM under a key kept beside the database.

    The receiver-security work verifies HMACs made with the secret, which needs the secret
    itself (a hash cannot verify an HMAC), so it is stored encrypted, with the receiver id as
    associated data so a ciphertext cannot be moved to another receiver. The key comes from
    LOA_SECRET_KEY (base64, 32 bytes) or a 0600 file created on first start.
    """

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        if len(key) != 32:
            raise ValueError("the secret key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, key_b64: str | None, key_file: Path) -> SecretBox:
        if key_b64:
            return cls(_unb64(key_b64.strip()))
        if key_file.exists():
            return cls(key_file.read_bytes())
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key = os.urandom(32)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return cls(key)

    def seal(self, secret: bytes, context: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret, context.encode())

    def open(self, blob: bytes, context: str) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], context.encode())
