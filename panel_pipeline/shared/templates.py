"""The built e-mail templates (templates/dist/*.json) and the checks made before SES sees any data.

Pure Python, no Node and no AWS: the Node build (templates/build.mjs) produces one JSON file per
template with its SES-ready subject, HTML and text parts and the Handlebars variables each part
reads (found by Handlebars' own parser, templates/variables.mjs); this module loads them and names
each version for SES by its content hash. Used by the Mailer (sending) and the Sampler (an
invitation's default data is checked against its template before a sample is drawn).

Two SES behaviours shape the API:
* SES accepts a send whose data lacks a variable (or has it null), returns a MessageId, and then
  silently drops the e-mail. `check_recipient_data` finds those recipients before a send.
* SES does not HTML-escape substituted values. The HTML parts use only `{{html.<name>}}`, filled
  from the escaped copy `escape_for_html` adds under the key `html`; subject and text use the raw
  `{{<name>}}` values. Escaping does not make a link safe: `link_variables` names the values the
  HTML puts in an `href` (or `src`), which the mailer checks against its link policy.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panel_pipeline.shared.contract import HTML_COPY_KEY

SES_NAME_PREFIX = "panel"
HASH_CHARS_IN_NAME = 8
PARTS = ("subject", "html", "text")


class TemplateError(ValueError):
    """A template file is missing or malformed, or data would overwrite the escaped copy."""


def default_dist_dir() -> Path:
    """templates/dist of the repository this package is installed (editable) from."""
    return Path(__file__).resolve().parents[2] / "templates" / "dist"


@dataclass(frozen=True)
class EmailTemplate:
    """One built template: what SES stores, plus the example data it was built and checked with."""

    name: str
    subject: str
    html: str
    text: str
    example_data: Mapping[str, Any] = field(default_factory=dict)
    # Every data path the three parts read, e.g. `first_name`, `html.first_name`, `items[].id`.
    variables: frozenset[str] = frozenset()
    # Data names whose value the HTML puts in a link (`href`, `src`, ...), e.g. `survey_url`: each
    # such value must pass the resource's link policy.
    link_variables: frozenset[str] = frozenset()

    @property
    def content_hash(self) -> str:
        """sha256 over the three parts SES stores; any change gives a new SES template name."""
        parts = json.dumps(
            {"subject": self.subject, "html": self.html, "text": self.text},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(parts.encode("utf-8")).hexdigest()

    @property
    def ses_name(self) -> str:
        """Versioned SES template name: a mailing in flight keeps the version it started with."""
        return f"{SES_NAME_PREFIX}-{self.name}-{self.content_hash[:HASH_CHARS_IN_NAME]}"


def load_template(path: Path) -> EmailTemplate:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return EmailTemplate(
            name=raw["name"],
            subject=raw["subject"],
            html=raw["html"],
            text=raw["text"],
            example_data=raw.get("example_data", {}),
            variables=frozenset(path for part in PARTS for path in raw["variables"][part]),
            link_variables=frozenset(raw["link_variables"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TemplateError(f"{path}: not a built template ({exc}); rebuild with `npm run build`") from exc


def load_templates(dist_dir: Path | None = None) -> dict[str, EmailTemplate]:
    """All built templates by name (`new_survey`, ...), from `dist_dir` or the repository's templates/dist."""
    directory = dist_dir or default_dist_dir()
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise TemplateError(f"no built templates in {directory}; run `npm ci && npm run build` in templates/")
    templates = [load_template(path) for path in paths]
    return {template.name: template for template in templates}


# --- data checks and escaping --------------------------------------------------------------------


def check_recipient_data(template: EmailTemplate, data: Mapping[str, Any]) -> list[str]:
    """Names the template needs that `data` lacks or has as null, sorted; empty when sendable.

    `data` is the recipient's raw data (before `escape_for_html`); a missing `html.x` is reported
    as `x`, since the escaped copy is built from it. Null counts as missing because SES drops
    the e-mail in both cases; a condition (`#if`) must be present too, false being a fine value.
    """
    full = escape_for_html(data)
    missing = {_raw_name(path) for path in template.variables if _missing(full, path.split("."))}
    return sorted(missing)


def _raw_name(path: str) -> str:
    prefix = f"{HTML_COPY_KEY}."
    return path[len(prefix) :] if path.startswith(prefix) else path


def _missing(value: Any, segments: list[str]) -> bool:
    if value is None:
        return True
    if not segments:
        return False
    head, rest = segments[0], segments[1:]
    is_list = head.endswith("[]")
    key = head[:-2] if is_list else head
    if key:
        if not isinstance(value, Mapping) or value.get(key) is None:
            return True
        value = value[key]
    if not is_list:
        return _missing(value, rest)
    if not isinstance(value, list):
        return True
    return any(_missing(item, rest) for item in value)


def escape_for_html(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` plus `html`: the same values with every string HTML-escaped (quotes included)."""
    if HTML_COPY_KEY in data:
        raise TemplateError(f"`{HTML_COPY_KEY}` is reserved for the escaped copy of the data")
    return {**data, HTML_COPY_KEY: _escaped(data)}


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return html.escape(value, quote=True)
    if isinstance(value, Mapping):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value
