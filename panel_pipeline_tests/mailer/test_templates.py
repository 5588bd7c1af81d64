"""The built templates and the pure checks: variables, recipient data, escaping, versioned names."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from panel_pipeline.mailer.templates import (
    EmailTemplate,
    TemplateError,
    check_recipient_data,
    escape_for_html,
    handlebars_variables,
    load_templates,
)

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
EXPECTED = {"new_survey", "password_recovery", "welcome", "points_registered", "paid"}


def test_all_five_templates_are_built(templates: dict[str, EmailTemplate]) -> None:
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
    template = templates[name]
    assert all(path.startswith("html.") for path in handlebars_variables(template.html))
    assert not any(path.startswith("html.") for path in handlebars_variables(template.subject + template.text))
    assert len((template.html + template.text).encode()) < 500 * 1024


def test_new_survey_needs_the_invitation_fields(templates: dict[str, EmailTemplate]) -> None:
    names = {path.removeprefix("html.") for path in templates["new_survey"].variables}
    assert names == {"first_name", "survey_name", "duration_minutes", "points", "survey_url", "unsubscribe_url"}


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
    assert handlebars_variables(source) == {
        "title", "raw", "contact.city", "bonus", "fallback", "hidden",
        "items", "items[].name", "items[].id", "items[].active", "title2",
        "items[].tags", "items[].tags[]", "profile", "profile.region", "signature",
    }


@pytest.mark.parametrize("source", ["{{#if a}}", "{{#if a}}{{/each}}", "{{/if}}", "{{> nowhere}}", "{{#lookup a b}}{{/lookup}}"])
def test_extractor_rejects_what_it_cannot_check(source: str) -> None:
    with pytest.raises(TemplateError):
        handlebars_variables(source)


def _template(html: str, text: str = "", subject: str = "s") -> EmailTemplate:
    return EmailTemplate(name="t", subject=subject, html=html, text=text)


def test_missing_and_null_values_are_reported_by_their_raw_name() -> None:
    template = _template("<p>{{html.first_name}} {{html.survey.name}}</p>", "{{points}}")
    assert check_recipient_data(template, {"first_name": None, "survey": {}, "points": 5}) == ["first_name", "survey.name"]
    assert check_recipient_data(template, {"first_name": "", "survey": {"name": "S"}, "points": 0}) == []


def test_each_item_must_carry_the_item_fields() -> None:
    template = _template("{{#each html.rows}}{{date}}{{/each}}", "{{#each rows}}{{date}} {{points}}{{/each}}")
    assert check_recipient_data(template, {"rows": [{"date": "d", "points": 1}]}) == []
    assert check_recipient_data(template, {"rows": [{"date": "d"}, {"date": "e", "points": 2}]}) == ["rows[].points"]
    assert check_recipient_data(template, {"rows": "not a list"}) == ["rows[].date", "rows[].points"]


def test_conditions_must_be_present_but_may_be_false() -> None:
    template = _template("{{#if html.bonus}}b{{/if}}")
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
