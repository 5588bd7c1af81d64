"""The composition chart is well-formed SVG and embeds in markdown."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ElementTree

import pandas as pd

from panel_pipeline.sampler.composition_chart import composition_svg
from panel_pipeline.sampler.quotas import select_members
from panel_pipeline.sampler.targets import Target
from panel_pipeline.shared.metadata import markdown_image


def test_chart_is_valid_svg_with_a_row_per_category() -> None:
    panel = pd.DataFrame({"gender": ["female"] * 10 + ["male"] * 2, "region": ["Wales"] * 12})
    result = select_members(panel, [Target.from_shares("gender", {"female": 0.5, "male": 0.5})], 8, seed=1)
    svg = composition_svg(result.categories, result.tolerance_pp)
    root = ElementTree.fromstring(svg)
    texts = [element.text or "" for element in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "female" in texts and "male" in texts
    assert "#c53030" in svg  # male is short: drawn as outside tolerance
    markdown = markdown_image(svg)
    assert markdown.startswith("![") and base64.b64decode(markdown.split("base64,")[1][:-1]).decode() == svg
