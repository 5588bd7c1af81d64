"""What may be written about an error: its class and a redacted message, never personal data.

Invariants: a text that passes through `redact` holds no e-mail address, no URL (links carry
tokens) and no long hex or base64 run (tokens, secrets, hashes); `describe_error` never includes a
pymongo bulk error's failed documents or an AWS error's raw message. Every error a run stores on a
queue document or logs goes through `describe_error`. No Dagster, no Mongo.
"""

from __future__ import annotations

import re

from botocore.exceptions import ClientError
from pymongo.errors import BulkWriteError, OperationFailure, WriteError

ERROR_MAX_CHARS = 1000
_EMAIL_LIKE = re.compile(r"[^\s<>\"',;:()\[\]{}]+@[^\s<>\"',;:()\[\]{}]+")
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_AT_BETWEEN = re.compile(r"(?<=\S)@(?=\S)")
_TOKEN_LIKE = re.compile(r"\b[A-Fa-f0-9]{24,}\b|\b[A-Za-z0-9_\-+/=]{40,}")


def redact(text: str) -> str:
    """`text` without e-mail addresses, URLs or token-like runs, for logs and stored errors; an `@`
    left between two characters (`0@{`: not an address `_EMAIL_LIKE` knows) becomes `(at)`, so no
    text that reads like part of one survives."""
    text = _URL_LIKE.sub("<url>", text)
    text = _EMAIL_LIKE.sub("<email>", text)
    text = _AT_BETWEEN.sub("(at)", text)
    return _TOKEN_LIKE.sub(_keep_object_ids, text)


def _keep_object_ids(match: re.Match[str]) -> str:
    # A Mongo ObjectId (24 hex) names a document, not a person: operators need it to find things.
    return match.group(0) if len(match.group(0)) == 24 else "<token>"


def describe_error(exc: BaseException) -> str:
    """`Class: redacted message`, clipped; pymongo write errors give only their codes, because
    their text repeats the documents that failed (addresses, tokens)."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        codes = sorted({str(error.get("code")) for error in errors})
        message = f"{len(errors)} write error(s), codes {', '.join(codes) or 'none'}"
    elif isinstance(exc, WriteError | OperationFailure):
        message = f"code {exc.code}"
    elif isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        message = f"{error.get('Code', 'ClientError')}: {redact(str(error.get('Message', '')))}"
    else:
        message = redact(str(exc))
    return clip(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def clip(message: str, limit: int = ERROR_MAX_CHARS) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"
