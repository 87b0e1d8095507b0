"""Webhook signatures, the Standard Webhooks way (what Replicate uses): ``whsec_`` secrets, the
``webhook-signature`` of a message, and its verification with a timestamp tolerance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Mapping

from videoq.errors import Unauthorized

SECRET_PREFIX = "whsec_"
_WEBHOOK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:8]).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is `whsec_` followed by base64") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float,
    now: float | None = None,
) -> str:
    """Check a Standard Webhooks signature; returns the webhook id. Raises :class:`Unauthorized`
    (code ``invalid_signature``) when a header is missing, the timestamp is further than
    ``tolerance_s`` from ``now``, or no ``v1`` signature matches (constant-time compare)."""

    def refuse(why: str) -> Unauthorized:
        return Unauthorized(f"webhook refused: {why}", code="invalid_signature")

    msg_id = headers.get("webhook-id") or ""
    stamp = headers.get("webhook-timestamp") or ""
    signatures = headers.get("webhook-signature") or ""
    if not (msg_id and stamp and signatures):
        raise refuse("webhook-id, webhook-timestamp and webhook-signature are required")
    if not _WEBHOOK_ID.match(msg_id):
        raise refuse("malformed webhook-id")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise refuse("malformed webhook-timestamp")
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise refuse("timestamp outside the tolerance")
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split(" "):
        if candidate.startswith("v1,") and hmac.compare_digest(
            candidate.encode("utf-8", "replace"), expected
        ):
            return msg_id
    raise refuse("no matching signature")
