"""The signed unsubscribe token of bulk mail, and the check the backend makes when the link is used.

Scheme (docs/contract.md, "Unsubscribe links"): for member id `m` (the `users._id` as 24 hex) and key
version `v` (e.g. `v1`, naming which secret signed it),

    token = v + "." + hex(HMAC-SHA256(secret_v, "unsubscribe:" + v + ":" + m))

The purpose (`unsubscribe`) and the version are inside the signed text, so a token made for another
purpose or under another key never verifies here. `verify_unsubscribe_token` compares in constant
time (`hmac.compare_digest`); the backend may import it or copy these few lines. Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

PURPOSE = "unsubscribe"
DEFAULT_KEY_VERSION = "v1"
KEY_VERSION = re.compile(r"^v[0-9]{1,4}$")


def unsubscribe_token(member_id: str, secret: str, key_version: str = DEFAULT_KEY_VERSION) -> str:
    """The token for `member_id` signed with `secret` under `key_version`."""
    if not secret:
        raise ValueError("the unsubscribe secret is empty")
    if not KEY_VERSION.fullmatch(key_version):
        raise ValueError("an unsubscribe key version looks like v1, v2, ...")
    return f"{key_version}.{_signature(member_id, secret, key_version)}"


def verify_unsubscribe_token(token: str, member_id: str, secrets: Mapping[str, str]) -> bool:
    """True when `token` was made for `member_id` by one of `secrets` (key version -> secret;
    keep the previous version during a key rotation)."""
    if not isinstance(token, str) or not isinstance(member_id, str):
        return False
    key_version, _, signature = token.partition(".")
    secret = secrets.get(key_version)
    if not secret or not KEY_VERSION.fullmatch(key_version):
        return False
    return hmac.compare_digest(signature.encode(), _signature(member_id, secret, key_version).encode())


def _signature(member_id: str, secret: str, key_version: str) -> str:
    message = f"{PURPOSE}:{key_version}:{member_id}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
