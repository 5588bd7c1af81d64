"""The built templates and the pure checks: variables (from dist/, found by the Node build with
Handlebars' own parser), recipient data, escaping, versioned names."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from panel_pipeline.shared.templates import (
    EmailTemplate,
    TemplateError,
    check_recipient_data,
    escape_for_html,
    load_templates,
)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
EXPECTED = {"new_survey", "survey_reminder", "password_recovery", "welcome", "points_registered", "paid"}


@pytest.fixture(scope="module")
def templates() -> dict[str, EmailTemplate]:
    return load_templates()


def node_variables(source: str) -> dict[str, Any]:
    """What templates/variables.mjs (the build's Handlebars walk) finds in `source`."""
    found = subprocess.run(
        ["node", "variables.mjs"],
        cwd=TEMPLATES_DIR,
        input=source,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(found.stdout)


def _dist(name: str) -> dict[str, Any]:
    return json.loads((TEMPLATES_DIR / "dist" / f"{name}.json").read_text())


def test_all_six_templates_are_built(templates: dict[str, EmailTemplate]) -> None:
    assert set(templates) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_data_passes_the_variable_check(templates: dict[str, EmailTemplate], name: str) -> None:
    template = templates[name]
    assert template.example_data, "every template ships example data"
    assert check_recipient_data(template, template.example_data) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dist_matches_its_sources(templates: dict[str, EmailTemplate], name: str) -> None:
    """Catches an edited source committed without `npm run build` (subject, text and example data)."""
    source = TEMPLATES_DIR / name
    template = templates[name]
    assert template.subject == (source / "subject.txt").read_text().strip()
    assert template.text == (source / "body.txt").read_text()
    assert template.example_data == json.loads((source / "example.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_html_uses_only_escaped_values_and_text_only_raw(templates: dict[str, EmailTemplate], name: str) -> None:
    read = _dist(name)["variables"]
    assert all(path.startswith("html.") for path in read["html"])
    assert not any(path.startswith("html.") for path in read["subject"] + read["text"])
    assert len((templates[name].html + templates[name].text).encode()) < 500 * 1024


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dist_variables_are_what_handlebars_finds_in_the_built_parts(
    templates: dict[str, EmailTemplate], name: str
) -> None:
    """Catches a dist whose variable lists were not rebuilt with its parts."""
    template = templates[name]
    parts = {"subject": template.subject, "html": template.html, "text": template.text}
    found = {part: node_variables(source) for part, source in parts.items()}
    assert _dist(name)["variables"] == {part: read["variables"] for part, read in found.items()}
    assert template.link_variables == set(found["html"]["link_variables"])


def test_new_survey_needs_the_invitation_fields(templates: dict[str, EmailTemplate]) -> None:
    """What the Python Handlebars parser (replaced by the build's) found in this template."""
    assert templates["new_survey"].variables == {
        "duration_minutes",
        "first_name",
        "points",
        "survey_name",
        "survey_url",
        "unsubscribe_url",
        "html.duration_minutes",
        "html.first_name",
        "html.points",
        "html.survey_name",
        "html.survey_url",
        "html.unsubscribe_url",
    }
    assert templates["new_survey"].link_variables == {"survey_url", "unsubscribe_url"}


def test_survey_reminder_needs_the_invitation_fields_and_the_closing_date(templates: dict[str, EmailTemplate]) -> None:
    """A reminder carries what the invitation did, so the same `default_data` plus `closes_on` fills it."""
    reminder, invitation = templates["survey_reminder"], templates["new_survey"]
    assert reminder.variables == invitation.variables | {"closes_on", "html.closes_on"}
    assert "{{closes_on}}" in reminder.subject and "{{html.closes_on}}" in reminder.html


def test_the_link_variables_are_read_from_the_built_html(templates: dict[str, EmailTemplate]) -> None:
    found = {name: template.link_variables for name, template in templates.items()}
    assert found == {
        "new_survey": {"survey_url", "unsubscribe_url"},
        "survey_reminder": {"survey_url", "unsubscribe_url"},
        "password_recovery": {"reset_url"},
        "welcome": {"profile_survey_url"},
        "points_registered": {"dashboard_url"},
        "paid": {"dashboard_url"},
    }
    html = '<img src="{{html.logo}}"><a title="{{html.name}}" href=\'{{{html.next}}}\'>'
    assert node_variables(html)["link_variables"] == ["logo", "next"]


def test_ses_name_is_versioned_by_content(templates: dict[str, EmailTemplate]) -> None:
    template = templates["welcome"]
    assert template.ses_name == f"panel-welcome-{template.content_hash[:8]}"
    changed = dataclasses.replace(template, text=template.text + "\nP.S.")
    assert changed.ses_name != template.ses_name
    assert load_templates()["welcome"].ses_name == template.ses_name


def test_missing_templates_dir_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="npm run build"):
        load_templates(tmp_path)


def test_extractor_follows_sections_each_this_and_parent_paths() -> None:
    source = (
        "{{! a comment }}{{title}} {{{raw}}} {{contact.city}}"
        "{{#if bonus}}{{bonus}}{{else if fallback}}x{{else}}y{{/if}}"
        "{{#unless hidden}}{{/unless}}"
        "{{#each items}}{{name}} {{this.id}} {{../title}} {{@index}}"
        "{{#if active}}{{../title2}}{{/if}}"
        "{{#each tags}}{{this}}{{/each}}{{/each}}"
        "{{#with profile}}{{region}}{{/with}}"
        '{{#* inline "sig"}}{{signature}}{{/inline}}{{> sig}}'
    )
    assert set(node_variables(source)["variables"]) == {
        "title",
        "raw",
        "contact.city",
        "bonus",
        "fallback",
        "hidden",
        "items",
        "items[].name",
        "items[].id",
        "items[].active",
        "title2",
        "items[].tags",
        "items[].tags[]",
        "profile",
        "profile.region",
        "signature",
    }


@pytest.mark.parametrize(
    "source", ["{{#if a}}", "{{#if a}}{{/each}}", "{{/if}}", "{{> nowhere}}", "{{#lookup a b}}{{/lookup}}"]
)
def test_extractor_rejects_what_it_cannot_check(source: str) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        node_variables(source)


def _template(*variables: str) -> EmailTemplate:
    return EmailTemplate(name="t", subject="s", html="", text="", variables=frozenset(variables))


def test_missing_and_null_values_are_reported_by_their_raw_name() -> None:
    template = _template(
        "html.first_name", "html.survey.name", "points"
    )  # <p>{{html.first_name}} {{html.survey.name}}</p>, {{points}}
    assert check_recipient_data(template, {"first_name": None, "survey": {}, "points": 5}) == [
        "first_name",
        "survey.name",
    ]
    assert check_recipient_data(template, {"first_name": "", "survey": {"name": "S"}, "points": 0}) == []


def test_each_item_must_carry_the_item_fields() -> None:
    # {{#each html.rows}}{{date}}{{/each}} and {{#each rows}}{{date}} {{points}}{{/each}}
    template = _template(
        *node_variables("{{#each html.rows}}{{date}}{{/each}}{{#each rows}}{{date}} {{points}}{{/each}}")["variables"]
    )
    assert check_recipient_data(template, {"rows": [{"date": "d", "points": 1}]}) == []
    assert check_recipient_data(template, {"rows": [{"date": "d"}, {"date": "e", "points": 2}]}) == ["rows[].points"]
    assert check_recipient_data(template, {"rows": "not a list"}) == ["rows[].date", "rows[].points"]


def test_conditions_must_be_present_but_may_be_false() -> None:
    template = _template("html.bonus")  # {{#if html.bonus}}b{{/if}}
    assert check_recipient_data(template, {"bonus": False}) == []
    assert check_recipient_data(template, {}) == ["bonus"]


def test_escape_for_html_escapes_every_nested_string() -> None:
    data = {"first_name": '<script>alert("x")</script> & Co', "n": 3, "items": [{"label": "a<b"}], "ok": True}
    escaped = escape_for_html(data)
    assert escaped["first_name"] == data["first_name"]
    assert escaped["html"] == {
        "first_name": "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co",
        "n": 3,
        "items": [{"label": "a&lt;b"}],
        "ok": True,
    }
    with pytest.raises(TemplateError):
        escape_for_html({"html": "reserved"})
