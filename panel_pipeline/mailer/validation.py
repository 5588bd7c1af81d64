"""Checks on what the backend writes into a `mailings` document, before anything is sent.

Pure Python (no Dagster, no Mongo, no AWS). Every problem is reported as a text that starts with the
field it is about (`recipients.3.data.when: ...`), and never repeats an address or a link, since
these texts are stored on the mailing or on its ledger rows:

* `check_mailing` (the document's shape: template, kind, default_data, recipients, sample ids)
  raises `RequestRejected`, so a wrong document is failed on its first attempt, never retried;
* `json_data` turns a data object into what SES's template data (JSON) can carry: dates become
  ISO 8601 strings and ObjectIds strings; any other value (bytes, a set, NaN...) or a reserved key
  (`html`, where the escaped copy goes) is a `DataProblem` naming the key;
* `address_problem` and `LinkPolicy.problem` say why one recipient's address or one link may not be
  mailed; such a recipient is failed alone (its ledger row `failed` with the reason).
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bson import Decimal128, ObjectId

from panel_pipeline.queue.store import RequestRejected
from panel_pipeline.shared.contract import BULK, HTML_COPY_KEY, MAIL_KINDS
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.privacy import redact
from panel_pipeline.shared.template_data import KEY, NUMBER, Conversion, NotJson, Path, as_json

MAX_ADDRESS_CHARS = 254
MAX_LOCAL_PART_CHARS = 64
MAX_LINK_CHARS = 2000
REPR_MAX_CHARS = 40
# The fields that name a mailing's recipients by sample: an invitation's, a reminder's, the backend's.
SAMPLE_FIELDS = ("invitation_for_sample", "reminder_for_sample", "sample_id")

_LOCAL_PART = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_FORBIDDEN_IN_LINK = re.compile(r"[\x00-\x20\x7f-\x9f<>\"'`\\]|\s")


class DataProblem(ValueError):
    """One recipient's data cannot be sent; the message starts with the field it is about."""


def check_mailing(mailing: Mapping[str, Any], template_names: Iterable[str]) -> None:
    """Raise `RequestRejected`, naming the field, if the document's shape is wrong; per-recipient
    problems (an address, a data value) are not raised here: those fail the recipient alone."""
    names = sorted(template_names)
    template = mailing.get("template")
    if template is None:
        raise RequestRejected(f"template: required; known: {', '.join(names)}")
    if not isinstance(template, str):
        raise RequestRejected(f"template: must be a string, not {_type_name(template)}")
    if template not in names:
        raise RequestRejected(f"template: no template {_short_repr(template)}; known: {', '.join(names)}")
    kind = mailing.get("kind", BULK)
    if kind not in MAIL_KINDS:
        raise RequestRejected(f'kind: must be "bulk" or "transactional", not {_short_repr(kind)}')
    try:
        mailing_data(mailing.get("default_data"))
    except DataProblem as problem:
        raise RequestRejected(str(problem)) from None
    recipients = mailing.get("recipients")
    if recipients is not None and not isinstance(recipients, list):
        raise RequestRejected(f"recipients: must be a list, not {_type_name(recipients)}")
    for index, entry in enumerate(recipients or []):
        check_recipient_entry(entry, f"recipients.{index}")
    for field_name in SAMPLE_FIELDS:
        if mailing.get(field_name) is not None:
            object_id(mailing[field_name], field_name)
    if not recipients and all(mailing.get(field_name) is None for field_name in SAMPLE_FIELDS):
        raise RequestRejected("recipients: the mailing lists no recipients and no sample_id")


def check_recipient_entry(entry: Any, where: str) -> None:
    """A listed recipient names a member (`user_id`) or an address (`email`); raises `RequestRejected`."""
    if not isinstance(entry, Mapping):
        raise RequestRejected(f"{where}: must be an object with a user_id or an email, not {_type_name(entry)}")
    if entry.get("user_id") is not None:
        object_id(entry["user_id"], f"{where}.user_id")
    elif entry.get("email") is not None:
        if not isinstance(entry["email"], str):
            raise RequestRejected(f"{where}.email: must be a string, not {_type_name(entry['email'])}")
    else:
        raise RequestRejected(f"{where}: give a user_id or an email")


def object_id(value: Any, field_name: str) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    raise RequestRejected(f"{field_name}: {_short_repr(value)} is not an id")


def mailing_data(value: Any, where: str = "default_data") -> dict[str, Any]:
    """`default_data` (or a recipient's `data`) as JSON-ready template data; absent is empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DataProblem(f"{where}: must be an object, not {_type_name(value)}")
    reserved = reserved_key_problem(value, where)
    if reserved:
        raise DataProblem(reserved)
    return json_data(value, where)


def reserved_key_problem(data: Mapping[str, Any], where: str) -> str | None:
    """Why `data` may not be sent as it is: it holds the key the pipeline fills with its escaped copy."""
    if HTML_COPY_KEY in data:
        return f"{where}.{HTML_COPY_KEY}: reserved (the pipeline puts the HTML-escaped copy of the data there)"
    return None


def json_data(value: Any, where: str) -> Any:
    """`value` as JSON can carry it: datetime -> ISO 8601 (naive read as UTC, as pymongo gives BSON
    dates), date -> ISO date, ObjectId and decimals -> strings; anything else is a `DataProblem`."""
    try:
        return as_json(value, conversions=MONGO_VALUES)
    except NotJson as wrong:
        at = _where(where, wrong.path)
        if wrong.reason == NUMBER:
            raise DataProblem(f"{at}: {wrong.value} is not a number JSON can carry") from None
        if wrong.reason == KEY:
            raise DataProblem(f"{at}: key {_short_repr(wrong.value)} is not a string") from None
        raise DataProblem(
            f"{at}: a {_type_name(wrong.value)} is not JSON; give a string, number, true/false, list or object"
        ) from None


# Values pymongo reads that SES's JSON data has no type for, as the text sent instead.
MONGO_VALUES: tuple[Conversion, ...] = (
    (dt.datetime, lambda moment: as_utc(moment).isoformat()),
    (dt.date, lambda day: day.isoformat()),
    ((ObjectId, Decimal128, decimal.Decimal), str),
)


def _where(where: str, path: Path) -> str:
    for step in path:
        where = f"{where}.{step}" if isinstance(step, int) else field_path(where, step)
    return where


def field_path(where: str, key: str) -> str:
    """`where.key`, or `where["odd key"]` for a key that is empty or holds spaces, dots or the like;
    a key holding an @ may be an address and is not repeated."""
    if "@" in key:
        return f"{where}[<a key like an address>]"
    if _PLAIN_KEY.fullmatch(key):
        return f"{where}.{key}"
    return f"{where}[{_short_repr(key).replace(chr(10), ' ')}]"


def address_problem(address: Any) -> str | None:
    """Why `address` (already trimmed and lower-cased) cannot be mailed, or None. Never repeats it."""
    if not isinstance(address, str) or not address:
        return "no e-mail address"
    if len(address) > MAX_ADDRESS_CHARS:
        return f"e-mail address longer than {MAX_ADDRESS_CHARS} characters"
    local, at, domain = address.rpartition("@")
    if not at or not local:
        return "not an e-mail address (no name before an @)"
    if len(local) > MAX_LOCAL_PART_CHARS or not _LOCAL_PART.fullmatch(local):
        return "not a valid e-mail address (the part before the @)"
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return "not a valid e-mail address (the domain)"
    return None


@dataclass(frozen=True)
class LinkPolicy:
    """Where links in an e-mail may point: `https` (and `http` only where `allow_http`, the local
    run), to a host of `hosts` (`*.example.org` allows its subdomains; None: any host, for callers
    without a resource), with no user part, no control characters, quotes, `<`, `>` or whitespace."""

    hosts: frozenset[str] | None
    allow_http: bool = False

    @classmethod
    def of(cls, hosts: Iterable[str], allow_http: bool = False) -> LinkPolicy:
        return cls(frozenset(host.strip().lower() for host in hosts if host.strip()), allow_http)

    def problem(self, url: Any) -> str | None:
        """Why `url` may not be a link in our mail, or None. Never repeats the link (it may hold a token)."""
        if not isinstance(url, str):
            return f"a link must be a string, not {_type_name(url)}"
        if len(url) > MAX_LINK_CHARS:
            return f"link longer than {MAX_LINK_CHARS} characters"
        if _FORBIDDEN_IN_LINK.search(url):
            return "link holds whitespace, a control character, a quote, < or >"
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            return "not a valid link"
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme.lower() not in schemes:
            return f"link must be {' or '.join(schemes)}"
        if parts.username is not None or parts.password is not None:
            return "link must not carry a user name or password"
        if not self.allows_host(host):
            return "link points at a host that is not in the allowed link hosts"
        return None

    def allows_host(self, host: str) -> bool:
        if not host:
            return False
        if self.hosts is None or host in self.hosts:
            return True
        return any(allowed.startswith("*.") and host.endswith(allowed[1:]) for allowed in self.hosts)


# The policy of a caller without a resource: links must be https and well-formed, to any host.
ANY_HOST = LinkPolicy(hosts=None)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short_repr(value: Any) -> str:
    text = redact(repr(value))
    return text if len(text) <= REPR_MAX_CHARS else text[: REPR_MAX_CHARS - 1] + "…"
