"""The local SurveyGizmo server, spoken to with plain `requests`: envelopes, auth, filters, paging, faults."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from panel_pipeline.extractor.normalize import question_shortnames
from panel_pipeline.extractor.responses import parse_response
from panel_pipeline.local.demo import demo_user_id
from panel_pipeline.local.mongod import free_port
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.faults import (
    Outage,
    RandomFaults,
    cdn_error,
    dropped_rows,
    maintenance_page,
    please_wait,
    result_not_ok,
    server_error,
    slow,
    throttled,
    truncated,
)
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo

TOKEN, SECRET = "local-token-1", "local-secret-2"
AUTH = {"api_token": TOKEN, "api_token_secret": SECRET}
UTC = dt.UTC
START = dt.datetime(2024, 6, 3, 4, 0, tzinfo=UTC)  # 2024-06-03 00:00 EDT
PROFILE = {"gender": "male", "birth_year": 1961, "region": "Wales", "eu_ref_vote": "leave"}


@pytest.fixture
def server() -> Iterator[LocalSurveyGizmo]:
    with LocalSurveyGizmo(TOKEN, SECRET) as running:
        running.add_survey(PROFILE_SURVEY)
        for index in range(10):  # one an hour from 00:00 EDT; ids 1..10; 9 and 10 are Partial test data
            extra = {"status": "Partial", "is_test_data": True} if index >= 8 else {}
            record = response_record(
                PROFILE,
                response_id=index + 1,
                submitted_at=START + dt.timedelta(hours=index),
                account_zone=running.zone,
                **extra,
            )
            record["contact_id"] = str(100 + index) if index % 2 else ""
            running.add_response(PROFILE_SURVEY_ID, record)
        yield running


def get(server: LocalSurveyGizmo, path: str, **params: Any) -> requests.Response:
    return requests.get(server.base_url + path, params={**AUTH, **params}, timeout=5)


def listed(server: LocalSurveyGizmo, *filters: tuple[str, str, str | None], **params: Any) -> list[str]:
    query = dict(params)
    for index, (field, operator, value) in enumerate(filters):
        query[f"filter[field][{index}]"] = field
        query[f"filter[operator][{index}]"] = operator
        if value is not None:
            query[f"filter[value][{index}]"] = value
    answer = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", **query)
    assert answer.status_code == 200, answer.text
    return [row["id"] for row in answer.json()["data"]]


def test_list_envelope_and_record_shape(server: LocalSurveyGizmo) -> None:
    body = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", resultsperpage=4, page=3).json()
    assert {key: body[key] for key in ("result_ok", "total_count", "page", "total_pages", "results_per_page")} == {
        "result_ok": True,
        "total_count": 10,
        "page": 3,
        "total_pages": 3,
        "results_per_page": 4,
    }
    assert [row["id"] for row in body["data"]] == ["9", "10"]
    assert body["data"][0]["date_submitted"] == "2024-06-03 08:00:00 EDT"
    assert body["data"][0]["survey_data"]["12"]["answer"] == "Wales"


def test_paging_defaults_clamps_and_errors(server: LocalSurveyGizmo) -> None:
    path = f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse"
    assert get(server, path).json()["results_per_page"] == 50
    assert get(server, path, resultsperpage=1000).json()["results_per_page"] == 500
    past_end = get(server, path, page=9).json()
    assert (past_end["data"], past_end["total_count"]) == ([], 10)
    bad = get(server, path, resultsperpage="lots")
    assert bad.status_code == 400 and bad.json()["result_ok"] is False
    server.string_totals = True
    assert get(server, path).json()["total_count"] == "10"
    nothing = get(
        server, path, **{"filter[field][0]": "status", "filter[operator][0]": "=", "filter[value][0]": "Disqualified"}
    ).json()
    assert (nothing["total_count"], nothing["total_pages"]) == ("0", 0)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([("date_submitted", ">=", "2024-06-03 05:00:00")], [str(i) for i in range(6, 11)]),
        ([("date_submitted", ">", "2024-06-03 05:00:00")], [str(i) for i in range(7, 11)]),
        ([("date_submitted", "<", "2024-06-03 02:00:00")], ["1", "2"]),
        ([("date_submitted", "<=", "2024-06-03 02:00:00")], ["1", "2", "3"]),
        ([("date_submitted", "=", "2024-06-03 03:00:00")], ["4"]),
        ([("date_submitted", ">=", "2024-06-03"), ("date_submitted", "<", "2024-06-03 01:00:00")], ["1"]),
        ([("status", "=", "partial")], ["9", "10"]),
        ([("status", "<>", "Complete")], ["9", "10"]),
        ([("status", "!=", "Partial")], [str(i) for i in range(1, 9)]),
        ([("status", "in", "Disqualified, Partial")], ["9", "10"]),
        ([("is_test_data", "=", "0")], [str(i) for i in range(1, 9)]),
        ([("contact_id", "IS NULL", None)], ["1", "3", "5", "7", "9"]),
        ([("contact_id", "IS NOT NULL", None)], ["2", "4", "6", "8", "10"]),
        ([("contact_id", ">", "105")], ["8", "10"]),
        ([("contact_id", "in", "101,109")], ["2", "10"]),
    ],
)
def test_filter_engine(
    server: LocalSurveyGizmo, filters: list[tuple[str, str, str | None]], expected: list[str]
) -> None:
    assert listed(server, *filters) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"filter[field][0]": "favourite_colour", "filter[operator][0]": "=", "filter[value][0]": "red"},
        {"filter[field][0]": "status", "filter[operator][0]": "LIKE", "filter[value][0]": "C%"},
        {"filter[field][0]": "status", "filter[operator][0]": "="},
        {"filter[field][1]": "status", "filter[operator][1]": "=", "filter[value][1]": "Complete"},
        {"filter[field][0]": "date_submitted", "filter[operator][0]": ">", "filter[value][0]": "yesterday"},
    ],
)
def test_bad_filters_are_400_errors(server: LocalSurveyGizmo, query: dict[str, str]) -> None:
    answer = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", **query)
    assert answer.status_code == 400 and answer.json()["result_ok"] is False


def test_a_created_survey_and_response_are_served_as_the_extractor_reads_them(server: LocalSurveyGizmo) -> None:
    """`PUT /v5/survey` (locally with the id a sample names) and `PUT .../surveyresponse` (or `_method=PUT`)."""
    created = requests.put(server.base_url + "/v5/survey", params={**AUTH, "title": "Omnibus", "id": "12"}, timeout=5)
    assert created.status_code == 200 and created.json()["data"]["id"] == "12"
    again = requests.put(server.base_url + "/v5/survey", params={**AUTH, "title": "Other", "id": "12"}, timeout=5)
    assert again.json()["data"]["title"] == "Omnibus", "an existing survey is left as it is"
    shortnames = question_shortnames(get(server, "/v5/survey/12").json()["data"])
    assert set(shortnames.values()) == {"overall", "panel_id"}
    path = "/v5/survey/12/surveyresponse"
    member = str(demo_user_id(7))
    answer = get(server, path, _method="PUT", **{"data[overall][value]": "Neither", "data[panel_id][value]": member})
    assert answer.status_code == 200, answer.text
    record = answer.json()["data"]
    assert (record["id"], record["status"]) == ("1", "Complete")
    assert get(server, f"{path}/1").json()["data"] == record
    response = parse_response(record, "12", server.zone)
    assert response.answers["3"].value == member and response.answers["2"].option_id == "10003"
    second = requests.put(
        server.base_url + path, params={**AUTH, "status": "Partial", "data[2][value]": "Very satisfied"}, timeout=5
    )
    assert second.json()["data"]["id"] == "2" and second.json()["data"]["survey_data"]["3"]["shown"] is False
    assert listed_in(server, "12", ("[question(3)]", "=", member)) == ["1"]
    assert listed_in(server, "12", ("[question(3)]", "IS NULL", None)) == ["2"]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v5/survey", {}, 400),  # no title
        ("/v5/survey/404/surveyresponse", {"data[2][value]": "x"}, 404),
        (f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", {}, 400),  # no data
        (f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", {"data[nope][value]": "x"}, 404),
        (f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", {"data[gender][value]": "x", "status": "Deleted"}, 400),
        (f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse/3", {"data[gender][value]": "x"}, 405),
    ],
)
def test_a_create_the_api_refuses_is_an_error(
    server: LocalSurveyGizmo, path: str, params: dict[str, str], status: int
) -> None:
    answer = requests.put(server.base_url + path, params={**AUTH, **params}, timeout=5)
    assert (answer.status_code, answer.json()["result_ok"]) == (status, False)
    unauthorised = requests.put(server.base_url + path, params={"title": "x", **params}, timeout=5)
    assert unauthorised.status_code == 401


def listed_in(server: LocalSurveyGizmo, survey_id: str, *filters: tuple[str, str, str | None]) -> list[str]:
    query: dict[str, str] = {}
    for index, (field, operator, value) in enumerate(filters):
        query |= {f"filter[field][{index}]": field, f"filter[operator][{index}]": operator}
        if value is not None:
            query[f"filter[value][{index}]"] = value
    return [row["id"] for row in get(server, f"/v5/survey/{survey_id}/surveyresponse", **query).json()["data"]]


def test_routes_auth_and_methods(server: LocalSurveyGizmo) -> None:
    for path in (
        f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse/",
        f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse.json",
    ):
        assert get(server, path).json()["total_count"] == 10
    assert get(server, "/v5/nothing").status_code == 404
    assert requests.post(server.base_url + "/v5/account", params=AUTH, timeout=5).status_code == 405
    assert get(server, "/v5/account", _method="DELETE").status_code == 405
    unauthorised = requests.get(server.base_url + "/v5/account", params={"api_token": TOKEN}, timeout=5)
    assert (unauthorised.status_code, unauthorised.json()) == (
        401,
        {"result_ok": False, "code": 401, "message": "Login failed / Invalid auth token"},
    )
    server.auth_failure_status = 200
    assert requests.get(server.base_url + "/v5/account", timeout=5).status_code == 200


def test_single_objects_edits_and_deletes(server: LocalSurveyGizmo) -> None:
    path = f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse/3"
    assert get(server, path).json()["data"]["id"] == "3"
    server.unwrapped_single = True
    assert get(server, path).json()["id"] == "3"

    server.edit_response(PROFILE_SURVEY_ID, 3, status="Partial", date_submitted="2024-06-04 09:00:00 EDT")
    assert listed(server, ("status", "=", "Partial")) == ["3", "9", "10"]
    assert listed(server, ("date_submitted", ">=", "2024-06-04")) == ["3"]

    server.delete_response(PROFILE_SURVEY_ID, 3)
    assert get(server, path).status_code == 404
    assert "3" not in listed(server)
    survey = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}").json()["data"]
    assert survey["statistics"] == {"Complete": 7, "Partial": 2}
    assert survey["pages"][0]["questions"][5]["sub_questions"][0]["shortname"] == "vote_2019"


def test_malformed_records_and_unicode_are_served_verbatim(server: LocalSurveyGizmo) -> None:
    server.add_response(
        PROFILE_SURVEY_ID, {"id": "50", "status": 17, "date_submitted": "soon", "survey_data": "??"}, submitted_at=START
    )
    server.add_response(
        PROFILE_SURVEY_ID,
        {"id": "51", "status": "Complete", "survey_data": {"2": {"id": 2, "answer": "Zoë 🙂 / ok"}}},
        submitted_at=START,
    )
    assert get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse/50").json()["data"]["survey_data"] == "??"
    assert "50" in listed(server, ("date_submitted", "<", "2024-06-03 00:00:01"))
    assert "51" in listed(server, ("date_submitted", "<", "2024-06-03 00:00:01"))

    plain = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse/51")
    assert "Zoë 🙂 / ok" in plain.text
    server.php_escapes = True
    escaped = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse/51")
    assert "Zo\\u00eb \\ud83d\\ude42 \\/ ok" in escaped.text
    assert escaped.json() == plain.json()


@pytest.mark.parametrize(
    ("fault", "status", "content_type"),
    [
        (throttled(1, retry_after="7"), 429, "application/json"),
        (please_wait(), 400, "application/json"),
        (server_error(504), 504, "application/json"),
        (cdn_error(522), 522, "text/html"),
        (maintenance_page(), 200, "text/html"),
        (result_not_ok(code=401, http_status=200), 200, "application/json"),
    ],
)
def test_injected_faults_answer_once_then_recover(
    server: LocalSurveyGizmo, fault: Any, status: int, content_type: str
) -> None:
    server.inject(fault)
    faulty = get(server, "/v5/account")
    assert faulty.status_code == status and faulty.headers["Content-Type"].startswith(content_type)
    if status == 429:
        assert faulty.headers["Retry-After"] == "7"
    assert get(server, "/v5/account").json()["result_ok"] is True


def test_slow_truncated_and_scoped_faults(server: LocalSurveyGizmo) -> None:
    server.inject(slow(0.5))
    with pytest.raises(requests.Timeout):
        requests.get(server.base_url + "/v5/account", params=AUTH, timeout=0.1)
    server.inject(truncated())
    with pytest.raises(ValueError):
        get(server, "/v5/account").json()
    server.inject(server_error(500, times=2))
    assert get(server, "/v5/account").status_code == 500
    server.clear_faults()
    scoped = throttled(5)
    scoped.path_contains = "surveyresponse"
    server.inject(scoped)
    assert get(server, "/v5/account").status_code == 200
    assert get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse").status_code == 429


def test_dropped_rows_shorten_a_page_its_totals_still_count(server: LocalSurveyGizmo) -> None:
    server.inject(dropped_rows(2))
    body = get(server, f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse").json()
    assert (body["total_count"], len(body["data"])) == (10, 8)
    assert len(listed(server)) == 10


def test_random_faults_fail_their_share_of_requests_reproducibly(server: LocalSurveyGizmo) -> None:
    def statuses(seed: int) -> list[int]:
        server.random_faults = RandomFaults(0.2, seed=seed)
        return [get(server, "/v5/account").status_code for _ in range(200)]

    first = statuses(seed=5)
    assert first == statuses(seed=5)
    failed = [status for status in first if status != 200]
    assert 20 <= len(failed) <= 60 and set(failed) <= {429, 500, 502, 503}
    server.clear_faults()
    assert get(server, "/v5/account").status_code == 200


def test_outages_hit_list_calls_only(server: LocalSurveyGizmo) -> None:
    server.outage = Outage(days=frozenset({dt.date(2024, 6, 3)}))
    path = f"/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse"
    day = {"filter[field][0]": "date_submitted", "filter[operator][0]": ">=", "filter[value][0]": "2024-06-03"}
    assert get(server, path, **day).status_code == 503
    assert get(server, path, **{**day, "filter[value][0]": "2024-06-04"}).status_code == 200
    assert get(server, path + "/1").status_code == 200

    now = dt.datetime.now(UTC)
    server.outage = Outage(start=now - dt.timedelta(seconds=5), end=now + dt.timedelta(minutes=5), status=502)
    assert get(server, path, **{**day, "filter[value][0]": "2024-06-04"}).status_code == 502


def test_after_requests_runs_a_mutation_between_two_requests(server: LocalSurveyGizmo) -> None:
    server.after_requests(1, lambda: server.delete_response(PROFILE_SURVEY_ID, 1))
    assert len(listed(server)) == 10
    assert len(listed(server)) == 9


def test_nothing_secret_in_the_request_log_or_the_http_log(
    server: LocalSurveyGizmo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="panel_pipeline.local.surveygizmo.server")
    listed(server, ("status", "=", "Complete"))
    logged = server.requests[-1]
    assert logged.params == {"filter[field][0]": "status", "filter[operator][0]": "=", "filter[value][0]": "Complete"}
    assert TOKEN not in logged.query and SECRET not in logged.query
    assert "surveyresponse" in caplog.text and TOKEN not in caplog.text and SECRET not in caplog.text


def test_cli_serves_demo_data() -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "panel_pipeline.local.surveygizmo",
        "--port",
        str(port),
        "--demo",
        "--members",
        "40",
        "--days",
        "2",
        "--end",
        "2026-03-03T00:00:00",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline() if process.stdout else ""
        assert f"http://127.0.0.1:{port}/v5" in banner and "demo-secret" not in banner
        params = {"api_token": "demo-token", "api_token_secret": "demo-secret", "resultsperpage": 500}
        body = requests.get(
            f"http://127.0.0.1:{port}/v5/survey/{PROFILE_SURVEY_ID}/surveyresponse", params=params, timeout=5
        ).json()
        assert body["total_count"] == 40
        assert body["data"][0]["survey_data"]["19"]["answer"] == str(demo_user_id(1))
        assert body["data"][0]["date_submitted"] == "2026-02-28 19:00:00 EST"  # 2 days before --end (UTC)
    finally:
        process.terminate()
        process.wait(timeout=10)
