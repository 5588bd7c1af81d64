"""How every asset describes itself in the Dagster UI: one way to build a table, the owners, the
row count under Dagster's own key, and run tag values made from free text (`tag_value`).

Conventions: each asset has a docstring, `owners=OWNERS`, `kinds` naming what it runs on
({"python", "mongodb"} plus "aws" or "surveygizmo" where it talks to them, "csv" where it writes
a file), and, where it writes rows, `row_count(n)` among its metadata. Code references are added
once, in panel_pipeline/definitions.py. A run tag whose value comes from a document (a sample's name) goes
through `tag_value`: redacted (shared/privacy.py), then only letters, digits, `_`, `-` and `.`, at
most TAG_VALUE_MAX_CHARS, as Dagster's strict tags allow, so the Runs page can filter on it.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg

from panel_pipeline.shared.privacy import redact

OWNERS = ["team:panel-data"]
ROW_COUNT = "dagster/row_count"

_CELL_TYPES = (str, int, float, bool)
TAG_VALUE_MAX_CHARS = 63  # Dagster's limit for strict tag values
UNNAMED = "unnamed"
_NOT_IN_TAG = re.compile(r"[^A-Za-z0-9_.-]+")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> dg.TableMetadataValue:
    """`rows` (one value per column) as a table the UI shows; a value that is not text, a number
    or a bool is shown as its text."""
    records = [
        dg.TableRecord({column: _cell(value) for column, value in zip(columns, row, strict=True)}) for row in rows
    ]
    schema = dg.TableSchema(columns=[dg.TableColumn(column, _column_type(records, column)) for column in columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def row_count(count: int) -> dict[str, dg.IntMetadataValue]:
    return {ROW_COUNT: dg.MetadataValue.int(count)}


def tag_value(text: Any) -> str:
    """Free text (a sample's name) as a short, safe run tag value: "Omnibus wave 12" -> "Omnibus_wave_12";
    no address, link or token survives (they are redacted first); UNNAMED when nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", redact(str(text or ""))).encode("ascii", "ignore").decode("ascii")
    cleaned = _NOT_IN_TAG.sub("_", ascii_text).strip("_.-")
    return cleaned[:TAG_VALUE_MAX_CHARS].rstrip("_.-") or UNNAMED


def _cell(value: Any) -> str | int | float | bool | None:
    return value if value is None or isinstance(value, _CELL_TYPES) else str(value)


def _column_type(records: Sequence[dg.TableRecord], column: str) -> str:
    values = [record.data[column] for record in records if record.data.get(column) is not None]
    if values and all(isinstance(v, bool) for v in values):
        return "bool"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int"
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "float"
    return "string"


def markdown_image(svg: str, alt: str = "chart") -> str:
    """Markdown that shows the SVG inline (for dagster.MetadataValue.md)."""
    encoded = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f"![{alt}](data:image/svg+xml;base64,{encoded})"
