"""A mailing's report (pure): categories of SES events, rates over sent, the chart, the who-got-what query."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from xml.etree import ElementTree

import pytest

from panel_pipeline.mailer.report import (
    CATEGORIES,
    MailingReport,
    category_for,
    hour_of,
    report_chart_svg,
    who_got_what_query,
)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("event_type", "bounce_type", "category"),
    [
        ("Delivery", None, "delivered"),
        ("Bounce", "Permanent", "bounced_permanent"),
        ("Bounce", "Transient", "bounced_transient"),
        ("Bounce", "Undetermined", "bounced_undetermined"),
        ("Bounce", None, "bounced_undetermined"),
        ("Complaint", None, "complained"),
        ("Reject", None, "rejected"),
        ("Rendering Failure", None, "rendering_failed"),
        ("DeliveryDelay", None, "delivery_delayed"),
        ("Open", None, "opened"),
        ("Click", None, "clicked"),
        ("Send", None, None),  # sent is the ledger's
        ("Subscription", None, None),
    ],
)
def test_each_ses_event_type_has_its_category(event_type, bounce_type, category):
    assert category_for(event_type, bounce_type) == category


def test_hours_are_utc_and_make_field_names_without_dots():
    london = dt.timezone(dt.timedelta(hours=1))
    assert hour_of(dt.datetime(2026, 6, 1, 0, 30, tzinfo=london)) == "2026-05-31T23"
    assert hour_of(dt.datetime(2026, 6, 1, 9, 59)) == "2026-06-01T09"  # naive: Mongo's UTC


def test_rates_are_over_sent_and_zero_before_anything_is_sent():
    report = MailingReport.of(200, {"counts": {"delivered": 190, "bounced_permanent": 8, "complained": 1}})
    rates = report.rates()
    assert set(rates) == {f"{category}_rate" for category in CATEGORIES}
    assert (rates["delivered_rate"], rates["bounced_permanent_rate"], rates["complained_rate"]) == (0.95, 0.04, 0.005)
    assert report.count("opened") == 0
    assert MailingReport.of(0, {"counts": {"delivered": 1}}).rates()["delivered_rate"] == 0.0
    assert MailingReport.of(5, None).counts == dict.fromkeys(CATEGORIES, 0)


def test_the_chart_draws_one_cumulative_line_per_category_seen():
    hours = {"2026-11-23T09": {"delivered": 150, "bounced_permanent": 2}, "2026-11-23T12": {"delivered": 40}}
    report = MailingReport.of(200, {"counts": {"delivered": 190, "bounced_permanent": 2}, "hours": hours})
    root = ElementTree.fromstring(report_chart_svg(report))
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == 2
    delivered_points = [tuple(map(float, point.split(","))) for point in lines[0].get("points", "").split()]
    assert len(delivered_points) == 4, "09:00 to 12:00, the hours without events too"
    assert delivered_points[0][1] == delivered_points[2][1] > delivered_points[3][1], "cumulative: flat, then rises"
    texts = " ".join(element.text or "" for element in root.iter(f"{SVG}text"))
    assert "delivered 190" in texts and "bounced_permanent 2" in texts and "sent 200" in texts
    assert list(ElementTree.fromstring(report_chart_svg(MailingReport.of(0, None))).iter(f"{SVG}polyline")) == []


def test_the_who_got_what_query_names_the_mailing_and_a_member_id_never_an_address():
    query = who_got_what_query("6566a0000000000000000001")
    assert 'mailing_id: ObjectId("6566a0000000000000000001"), recipient_key: "<member id>"' in query
    assert "db.mail_events.find(" in query and "batch_id: row.batch_id" in query
    assert "@" not in query and "email" not in query


def test_the_docs_give_the_query_the_metadata_shows():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "mailer.md").read_text()
    assert f"```js\n{who_got_what_query('<mailing id>')}\n```" in docs
