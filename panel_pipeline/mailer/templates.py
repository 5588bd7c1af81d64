"""The built e-mail templates (templates/dist/*.json) and the checks made before SES sees any data.

Pure Python, no Node and no AWS: the Node build (templates/build.mjs) produces one JSON file per
template with its SES-ready subject, HTML and text parts; this module loads them, names each
version for SES by its content hash, and reads the Handlebars variables the parts use.

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
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HTML_COPY_KEY = "html"
SES_NAME_PREFIX = "panel"
HASH_CHARS_IN_NAME = 8

_TOKEN = re.compile(r"\{\{(~?)(\{?)(.*?)(\}?)(~?)\}\}", re.DOTALL)
_INLINE_PARTIAL = re.compile(r'\{\{#\*\s*inline\s+"([^"]+)"\s*\}\}(.*?)\{\{/inline\}\}', re.DOTALL)
_PARTIAL_CALL = re.compile(r"\{\{>\s*([\w-]+)\s*\}\}")
_KEYWORD_LITERALS = {"true", "false", "null", "undefined", "else"}
# An attribute whose value is a link: what a variable in it becomes must be a URL we allow.
_LINK_ATTRIBUTE = re.compile(r"""\b(?:href|src|action|formaction|background|poster)\s*=\s*(["']?)([^"'>]*)\1""", re.IGNORECASE)


class TemplateError(ValueError):
    """A template file is missing, malformed or uses Handlebars this module cannot read."""


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

    @property
    def variables(self) -> frozenset[str]:
        """Every data path the three parts need, e.g. `first_name`, `html.first_name`, `items[].id`."""
        return frozenset().union(*(handlebars_variables(part) for part in (self.subject, self.html, self.text)))

    @property
    def link_variables(self) -> frozenset[str]:
        """Data names whose value the HTML puts in a link (`href`, `src`, ...), e.g. `survey_url`:
        each such value must pass the resource's link policy. Found by reading the built HTML."""
        return link_variables(self.html)


def load_template(path: Path) -> EmailTemplate:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return EmailTemplate(
            name=raw["name"],
            subject=raw["subject"],
            html=raw["html"],
            text=raw["text"],
            example_data=raw.get("example_data", {}),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise TemplateError(f"{path}: not a built template ({exc}); rebuild with `npm run build`") from exc


def load_templates(dist_dir: Path | None = None) -> dict[str, EmailTemplate]:
    """All built templates by name (`new_survey`, ...), from `dist_dir` or the repository's templates/dist."""
    directory = dist_dir or default_dist_dir()
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise TemplateError(f"no built templates in {directory}; run `npm ci && npm run build` in templates/")
    templates = [load_template(path) for path in paths]
    return {template.name: template for template in templates}


# --- Handlebars variable extraction --------------------------------------------------------------


def handlebars_variables(source: str) -> frozenset[str]:
    """Data paths a Handlebars source reads, as SES will resolve them.

    Supported: `{{a.b}}`, `{{{a}}}`, `{{#if a}}`/`{{#unless a}}`/`{{else}}`, `{{#each items}}` (inside:
    `{{name}}` -> `items[].name`, `{{this}}` -> `items[]`, `{{../x}}` -> the enclosing scope),
    `{{#with a}}`, inline partials, comments and `@index`-style data variables. A list path is
    written `items[]`; a path inside an element `items[].name`.
    """
    scopes: list[str] = [""]  # one entry per context-changing block (#each, #with)
    blocks: list[tuple[str, bool]] = []  # open blocks: helper name, whether it pushed a scope
    found: set[str] = set()
    for match in _TOKEN.finditer(_expand_inline_partials(source)):
        body = match.group(3).strip()
        if not body or body.startswith("!"):
            continue
        if body.startswith("#"):
            helper, argument = _split_helper(body[1:])
            path = _resolve(argument, scopes)
            if path is not None:
                found.add(path)
            scope = _scope_for(helper, path)
            if scope is not None:
                scopes.append(scope)
            blocks.append((helper, scope is not None))
        elif body.startswith("/"):
            if not blocks or blocks[-1][0] != body[1:].strip():
                raise TemplateError(f"unbalanced block close {{{{{body}}}}}")
            if blocks.pop()[1]:
                scopes.pop()
        elif body.startswith(">"):
            raise TemplateError(f"partial {{{{{body}}}}} is not defined inline in the same part")
        elif body.startswith("else "):
            _, argument = _split_helper(body[len("else "):])
            path = _resolve(argument, scopes)
            if path is not None:
                found.add(path)
        else:
            path = _resolve(body, scopes)
            if path is not None:
                found.add(path)
    if blocks:
        raise TemplateError(f"unclosed block(s): {', '.join(helper for helper, _ in blocks)}")
    return frozenset(found)


def link_variables(html_source: str) -> frozenset[str]:
    """Raw data names used inside link attributes of `html_source` (`{{html.survey_url}}` -> `survey_url`)."""
    found: set[str] = set()
    for match in _LINK_ATTRIBUTE.finditer(html_source):
        for token in _TOKEN.finditer(match.group(2)):
            body = token.group(3).strip()
            if body and body[0] not in "#/>!@":
                found.add(_raw_name(body))
    return frozenset(found)


def _expand_inline_partials(source: str) -> str:
    partials = {name: body for name, body in _INLINE_PARTIAL.findall(source)}
    without_definitions = _INLINE_PARTIAL.sub("", source)
    return _PARTIAL_CALL.sub(lambda call: partials.get(call.group(1), call.group(0)), without_definitions)


def _split_helper(body: str) -> tuple[str, str]:
    helper, _, argument = body.partition(" ")
    if helper not in {"if", "unless", "each", "with"}:
        raise TemplateError(f"block helper #{helper} is not one SES documents")
    return helper, argument.strip()


def _scope_for(helper: str, path: str | None) -> str | None:
    """The scope a block opens: `#each` and `#with` change the context, `#if`/`#unless` do not."""
    if path is None or helper not in {"each", "with"}:
        return None
    return f"{path}[]" if helper == "each" else path


def _resolve(expression: str, scopes: list[str]) -> str | None:
    """The absolute data path of a simple expression, or None for literals and @data variables."""
    if expression.startswith("@") or expression in _KEYWORD_LITERALS or not expression:
        return None
    if expression[0] in "\"'" or expression[0].isdigit() or " " in expression:
        raise TemplateError(f"expression {{{{{expression}}}}} is not a plain variable")
    depth = len(scopes) - 1
    while expression.startswith("../"):
        expression = expression[3:]
        depth = max(depth - 1, 0)
    base = scopes[depth]
    if expression in {"this", "."}:
        return base or None
    if expression.startswith("this."):
        expression = expression[5:]
    return f"{base}.{expression}" if base else expression


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
    return path[len(prefix):] if path.startswith(prefix) else path


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
