"""tag_value: free text as a short, safe run tag value, with nothing personal left in it."""

from __future__ import annotations

import re

import pytest

from panel_pipeline.shared.metadata import TAG_VALUE_MAX_CHARS, UNNAMED, tag_value

STRICT_TAG_VALUE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Omnibus wave 12", "Omnibus_wave_12"),
        ("  Omnibus   wave 12 (UK) ", "Omnibus_wave_12_UK"),
        ("Études: été 2026", "Etudes_ete_2026"),
        ("Wave 3 for jane.doe@example.org", "Wave_3_for_email"),
        ("see https://survey.example/s/12?token=abc", "see_url"),
        ("", UNNAMED),
        (None, UNNAMED),
        ("!!!", UNNAMED),
        (12, "12"),
    ],
)
def test_tag_values(text, expected):
    assert tag_value(text) == expected


def test_a_long_name_is_capped_and_every_value_is_a_strict_dagster_tag_value():
    long_name = "Omnibus " * 20
    value = tag_value(long_name)
    assert len(value) <= TAG_VALUE_MAX_CHARS and value.startswith("Omnibus_Omnibus")
    for text in (long_name, "a/b\\c\n\td", "x" * 100, "💡 idea", "<script>alert(1)</script>"):
        assert STRICT_TAG_VALUE.match(tag_value(text)), text
