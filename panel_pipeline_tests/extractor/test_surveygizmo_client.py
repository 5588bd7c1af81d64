"""The SurveyGizmo client against the local server over real HTTP: paging, faults, secrets, zones, limits."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import traceback
from collections import Counter
from collections.abc import Callable

import pytest

from panel_pipeline.extractor.surveygizmo import (
    Filter,
    RetryPolicy,
    SurveyGizmoAuthError,
    SurveyGizmoClient,
    SurveyGizmoError,
    SurveyGizmoNotFound,
    SurveyGizmoUnavailable,
    TokenBucket,
    filter_params,
    lower_bound_wall_time,
    upper_bound_wall_time,
)
from panel_pipeline.local.profile_survey import (
    PROFILE_SURVEY,
    PROFILE_SURVEY_ID,
    response_record,
)
from panel_pipeline.local.surveygizmo.faults import (
    Fault,
    Outage,
    cdn_error,
    maintenance_page,
    please_wait,
    result_not_ok,
    server_error,
    slow,
    throttled,
    truncated,
)
from panel_pipeline.local.surveygizmo.server import LocalSurveyGizmo
from panel_pipeline_tests.extractor.conftest import (
    API_TOKEN,
    API_TOKEN_SECRET,
    EXAMPLE_PROFILE,
    FakeClock,
    add_responses,
)

UTC = dt.timezone.utc
DAY = dt.datetime(2024, 6, 3, 4, 0, tzinfo=UTC)  # 00:00 EDT
NEXT_DAY = DAY + dt.timedelta(days=1)
ClientFactory = Callable[..., SurveyGizmoClient]


def backoffs(clock: FakeClock) -> list[float]:
    """Retry sleeps; the rate limiter's own sleeps between calls are at most 0.25 s at 240/min."""
    return [sleep for sleep in clock.sleeps if sleep >= 1.0]


def list_day(client: SurveyGizmoClient, **options: object) -> list[str]:
    return [record["id"] for record in client.list_responses(PROFILE_SURVEY_ID, DAY, NEXT_DAY, **options)]


def page_requests(server: LocalSurveyGizmo) -> list[dict[str, str]]:
    return [dict(r.params) for r in server.requests if r.path.endswith("surveyresponse") and r.params.get("resultsperpage") == "500"]


# -- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "pages"), [(0, 1), (1, 1), (500, 1), (501, 2), (1000, 2), (1001, 3)])
def test_pages_until_the_end_without_extra_empty_pages(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient, rows: int, pages: int) -> None:
    ids = add_responses(sg_server, rows, DAY, step=dt.timedelta(seconds=60))

    assert list_day(client) == ids
    assert [request["page"] for request in page_requests(sg_server)] == [str(page) for page in range(1, pages + 1)]
    assert client.calls_made == pages + 1  # the pages, then one count probe


def test_string_totals_and_id_keyed_data_give_the_same_rows(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    ids = add_responses(sg_server, 1100, DAY, step=dt.timedelta(seconds=30))
    sg_server.string_totals = True
    assert list_day(client) == ids
    sg_server.data_as_object = True
    assert list_day(client) == ids


def test_a_row_inserted_before_the_cursor_mid_scan_is_deduplicated_and_found(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    ids = add_responses(sg_server, 1000, DAY, first_id=2000)
    early = response_record(EXAMPLE_PROFILE, response_id=5, submitted_at=DAY + dt.timedelta(hours=20), account_zone=sg_server.zone)
    sg_server.after_requests(1, lambda: sg_server.add_response(PROFILE_SURVEY_ID, early))

    listed = list_day(client)

    assert Counter(listed).most_common(1)[0][1] == 1
    assert set(listed) == {*ids, "5"}


def test_a_row_deleted_mid_scan_leaves_an_empty_last_page_and_nothing_is_skipped(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    ids = add_responses(sg_server, 501, DAY)
    sg_server.after_requests(1, lambda: sg_server.delete_response(PROFILE_SURVEY_ID, ids[0]))

    listed = list_day(client)

    assert sorted(listed) == sorted(ids)  # the last row moved onto page 1 after we read it; the rescan finds it
    assert len(listed) == len(set(listed))
    assert {r.params["resultsperpage"] for r in sg_server.requests} >= {"500", "499"}  # rescanned with another size


def test_rows_added_after_the_last_page_are_found_by_the_count_probe(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    ids = add_responses(sg_server, 500, DAY)
    sg_server.after_requests(1, lambda: ids.extend(add_responses(sg_server, 300, DAY + dt.timedelta(hours=12), first_id=5000)))

    listed = list_day(client)

    assert sorted(listed) == sorted(ids) and len(ids) == 800


def test_records_with_unreadable_dates_are_passed_on_for_quarantine(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    ids = add_responses(sg_server, 2, DAY)
    sg_server.add_response(PROFILE_SURVEY_ID, {"id": "77", "status": "Complete", "date_submitted": "yesterday"}, submitted_at=DAY)
    sg_server.add_response(PROFILE_SURVEY_ID, {"id": "78", "status": "Complete", "date_submitted": 1717387200}, submitted_at=DAY)

    assert list_day(client) == ["77", "78", *ids]


def test_page_size_and_bounds_are_validated(client: SurveyGizmoClient) -> None:
    with pytest.raises(ValueError, match="page_size"):
        list_day(client, page_size=1000)
    with pytest.raises(ValueError, match="timezone-aware"):
        list(client.list_responses(PROFILE_SURVEY_ID, dt.datetime(2024, 1, 1), NEXT_DAY))


# -- filters -----------------------------------------------------------------------------------


def test_filters_go_on_the_wire_percent_encoded(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    list_day(client, status="Complete", include_test_data=False, filters=[Filter("contact_id", "IS NULL")])

    query = sg_server.requests[0].query
    assert "filter%5Bfield%5D%5B0%5D=date_submitted&filter%5Boperator%5D%5B0%5D=%3E%3D&filter%5Bvalue%5D%5B0%5D=2024-06-03+00%3A00%3A00" in query
    assert "filter%5Boperator%5D%5B1%5D=%3C&filter%5Bvalue%5D%5B1%5D=2024-06-04+00%3A00%3A00" in query
    assert "filter%5Bfield%5D%5B3%5D=is_test_data&filter%5Boperator%5D%5B3%5D=%3D&filter%5Bvalue%5D%5B3%5D=0" in query
    assert "filter%5Boperator%5D%5B4%5D=IS+NULL" in query and "filter%5Bvalue%5D%5B4%5D" not in query
    assert "api_token" not in query


def test_status_test_data_and_in_filters_select_rows(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    complete = add_responses(sg_server, 3, DAY + dt.timedelta(hours=1))
    partial = add_responses(sg_server, 2, DAY + dt.timedelta(hours=2), first_id=3000, status="Partial")
    test_data = add_responses(sg_server, 2, DAY + dt.timedelta(hours=3), first_id=4000, is_test_data=True)

    assert list_day(client, status="complete") == complete + test_data
    assert list_day(client, include_test_data=False) == complete + partial
    assert list_day(client, filters=[Filter("status", "in", ["Partial", "Disqualified"])]) == partial


def test_filter_objects_reject_bad_operators_and_values() -> None:
    with pytest.raises(ValueError, match="unknown filter operator"):
        Filter("status", "==", "Complete")
    with pytest.raises(ValueError, match="takes no value"):
        Filter("contact_id", "IS NULL", "1")
    with pytest.raises(ValueError, match="needs a value"):
        Filter("status", "=")
    assert filter_params([Filter("status", "in", ("Complete", "Partial"))]) == {
        "filter[field][0]": "status", "filter[operator][0]": "in", "filter[value][0]": "Complete,Partial",
    }


# -- single objects ------------------------------------------------------------------------------


def test_get_response_survey_and_account(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    [response_id] = add_responses(sg_server, 1, DAY)

    assert client.get_response(PROFILE_SURVEY_ID, response_id)["id"] == response_id
    sg_server.unwrapped_single = True
    assert client.get_response(PROFILE_SURVEY_ID, response_id)["survey_data"]["10"]["answer"] == "Female"
    survey = client.get_survey(PROFILE_SURVEY_ID)
    assert survey["pages"][0]["questions"][0]["shortname"] == "gender"
    assert client.get_account()["time_zone"] == "America/New_York"
    assert client.calls_made == 4


def test_deleted_and_unknown_objects_are_not_found_without_retries(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    [response_id] = add_responses(sg_server, 1, DAY)
    sg_server.delete_response(PROFILE_SURVEY_ID, response_id)

    with pytest.raises(SurveyGizmoNotFound):
        client.get_response(PROFILE_SURVEY_ID, response_id)
    with pytest.raises(SurveyGizmoNotFound):
        client.get_survey("999")
    assert client.calls_made == 2
    with pytest.raises(ValueError, match="not a SurveyGizmo id"):
        client.get_response(PROFILE_SURVEY_ID, "1/../../account")


# -- faults and retries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        throttled(3),
        please_wait(2),
        please_wait(2, status=429),
        server_error(500, 2),
        server_error(503, 2),
        cdn_error(502, 2),
        cdn_error(522, 3),
        maintenance_page(2),
        result_not_ok(code=500, http_status=200, times=2),
        result_not_ok(code=429, message="Please wait for other requests to complete", http_status=200),
        truncated(2),
    ],
    ids=lambda fault: f"{fault.status}-{fault.content_type.split('/')[1]}-{fault.times}",
)
def test_transient_faults_are_retried_with_backoff(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient, clock: FakeClock, fault: Fault) -> None:
    ids = add_responses(sg_server, 3, DAY)
    times = fault.times
    sg_server.inject(fault)

    assert list_day(client) == ids
    assert len(backoffs(clock)) == times


def test_throttles_back_off_longer_and_grow_with_jitter(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient, clock: FakeClock) -> None:
    sg_server.inject(throttled(3))
    list_day(client)

    policy = RetryPolicy(max_attempts=4)
    for retry, sleep in enumerate(backoffs(clock)):
        ceiling = min(policy.max_delay, policy.throttle_delay * 2**retry)
        assert ceiling / 2 <= sleep <= ceiling


def test_retry_after_is_honoured(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient, clock: FakeClock) -> None:
    sg_server.inject(throttled(1, retry_after="7"))
    list_day(client)
    assert backoffs(clock) == [7.0]
    assert client.retry_wait_seconds == 7.0


def test_slow_answers_time_out_and_are_retried(sg_server: LocalSurveyGizmo, make_client: ClientFactory) -> None:
    ids = add_responses(sg_server, 2, DAY)
    sg_server.inject(slow(1.0))
    client = make_client(timeout=(1.0, 0.2))

    assert list_day(client) == ids
    assert client.calls_made == 3


def test_a_400_in_the_minute_after_a_timeout_is_retried(sg_server: LocalSurveyGizmo, make_client: ClientFactory) -> None:
    sg_server.inject(slow(1.0))
    sg_server.inject(Fault(400, {"result_ok": False, "code": 400, "message": "Bad request"}))
    client = make_client(timeout=(1.0, 0.2))

    assert list_day(client) == []
    assert client.calls_made == 4


def test_gives_up_after_the_retry_budget_with_a_typed_error(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    sg_server.inject(cdn_error(503, times=100))

    with pytest.raises(SurveyGizmoUnavailable, match=r"failed after 4 attempts: HTTP 503 \(text/html page\)"):
        list_day(client)
    assert client.calls_made == 4


@pytest.mark.parametrize("http_status", [401, 200])
def test_rejected_credentials_fail_fast(sg_server: LocalSurveyGizmo, http_status: int) -> None:
    sg_server.auth_failure_status = http_status
    wrong = SurveyGizmoClient(API_TOKEN, "wrong-secret", base_url=sg_server.base_url, clock=FakeClock())

    with pytest.raises(SurveyGizmoAuthError, match="Login failed / Invalid auth token"):
        list(wrong.list_responses(PROFILE_SURVEY_ID, DAY, NEXT_DAY))
    assert wrong.calls_made == 1


def test_result_ok_false_on_200_is_an_error_even_without_a_code(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    sg_server.inject(result_not_ok(code=None, message="No valid contacts selected."))

    with pytest.raises(SurveyGizmoError, match="No valid contacts selected") as caught:
        client.get_survey(PROFILE_SURVEY_ID)
    assert type(caught.value) is SurveyGizmoError
    assert client.calls_made == 1


def test_an_outage_day_fails_its_window_and_spares_the_others(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    add_responses(sg_server, 2, DAY)
    tomorrow = add_responses(sg_server, 2, NEXT_DAY, first_id=3000)
    sg_server.outage = Outage(days=frozenset({dt.date(2024, 6, 3)}))

    with pytest.raises(SurveyGizmoUnavailable):
        list_day(client)
    assert [r["id"] for r in client.list_responses(PROFILE_SURVEY_ID, NEXT_DAY, NEXT_DAY + dt.timedelta(days=1))] == tomorrow

    sg_server.clear_faults()
    assert len(list_day(client)) == 2


def test_an_outage_time_window_fails_list_calls_while_it_lasts(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    now = dt.datetime.now(UTC)
    sg_server.outage = Outage(start=now - dt.timedelta(minutes=1), end=now + dt.timedelta(hours=1))
    with pytest.raises(SurveyGizmoUnavailable):
        list_day(client)

    sg_server.outage = Outage(start=now - dt.timedelta(hours=2), end=now - dt.timedelta(hours=1))
    assert list_day(client) == []


# -- secrets -------------------------------------------------------------------------------------


def _failures(sg_server: LocalSurveyGizmo, make_client: ClientFactory) -> list[Exception]:
    errors: list[Exception] = []
    scenarios: list[tuple[Callable[[], None], Callable[[], object]]] = [
        (lambda: sg_server.inject(cdn_error(522, times=10)), lambda: list_day(make_client())),
        (lambda: sg_server.inject(result_not_ok(code=401, message="Login failed / Invalid auth token")), lambda: make_client().get_survey(PROFILE_SURVEY_ID)),
        (lambda: sg_server.inject(slow(1.0, times=10)), lambda: list_day(make_client(timeout=(1.0, 0.1), retry=RetryPolicy(max_attempts=2)))),
        (lambda: None, lambda: make_client().get_response(PROFILE_SURVEY_ID, "404404")),
        (lambda: None, lambda: list_day(make_client(base_url="http://127.0.0.1:9", retry=RetryPolicy(max_attempts=2)))),
        (lambda: sg_server.inject(Fault(400, {"result_ok": False, "message": f"echo {API_TOKEN_SECRET}"})), lambda: make_client().get_survey(PROFILE_SURVEY_ID)),
    ]
    for arrange, act in scenarios:
        sg_server.clear_faults()
        arrange()
        with pytest.raises(SurveyGizmoError) as caught:
            act()
        errors.append(caught.value)
    return errors


def test_credentials_never_reach_logs_exceptions_tracebacks_or_reprs(
    sg_server: LocalSurveyGizmo, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    add_responses(sg_server, 3, DAY)
    list_day(make_client())
    errors = _failures(sg_server, make_client)

    texts = [caplog.text, repr(make_client())]
    texts += [f"{error}\n{error!r}\n{''.join(traceback.format_exception(error))}" for error in errors]
    for text in texts:
        assert API_TOKEN not in text and API_TOKEN_SECRET not in text
    assert "urllib3" in caplog.text  # DEBUG request lines were captured, and redacted
    assert {type(error) for error in errors} == {SurveyGizmoUnavailable, SurveyGizmoAuthError, SurveyGizmoNotFound, SurveyGizmoError}


# -- time zones ----------------------------------------------------------------------------------


def test_spring_forward_window_is_exact(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    # 2024-03-10 07:00Z: 02:00 EST jumps to 03:00 EDT.
    ids = add_responses(sg_server, 25, dt.datetime(2024, 3, 10, 5, 0, tzinfo=UTC), step=dt.timedelta(minutes=10))
    start, end = dt.datetime(2024, 3, 10, 6, 30, tzinfo=UTC), dt.datetime(2024, 3, 10, 7, 30, tzinfo=UTC)

    records = list(client.list_responses(PROFILE_SURVEY_ID, start, end))

    assert [r["id"] for r in records] == ids[9:15]
    assert [r["date_submitted"][-3:] for r in records] == ["EST"] * 3 + ["EDT"] * 3
    assert sg_server.requests[0].params["filter[value][0]"] == "2024-03-10 01:30:00"
    assert sg_server.requests[0].params["filter[value][1]"] == "2024-03-10 03:30:00"


def test_fall_back_window_covers_both_copies_of_the_repeated_hour(sg_server: LocalSurveyGizmo, client: SurveyGizmoClient) -> None:
    # 2024-11-03 06:00Z: 02:00 EDT falls back to 01:00 EST; 01:00-01:59 happens twice.
    ids = add_responses(sg_server, 25, dt.datetime(2024, 11, 3, 4, 0, tzinfo=UTC), step=dt.timedelta(minutes=10))
    start, end = dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC), dt.datetime(2024, 11, 3, 6, 30, tzinfo=UTC)

    records = list(client.list_responses(PROFILE_SURVEY_ID, start, end))

    assert [r["id"] for r in records] == ids[9:15]
    assert [r["date_submitted"] for r in records][2:4] == ["2024-11-03 01:50:00 EDT", "2024-11-03 01:00:00 EST"]
    assert sg_server.requests[0].params["filter[value][0]"] == "2024-11-03 00:30:00"  # widened: 01:30 is ambiguous
    assert sg_server.requests[0].params["filter[value][1]"] == "2024-11-03 02:30:00"


def test_wall_time_bounds_never_cut_the_window() -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/New_York")
    moment = dt.datetime(2024, 6, 3, 12, 0, 0, 500_000, tzinfo=UTC)
    assert lower_bound_wall_time(moment, zone) == "2024-06-03 08:00:00"
    assert upper_bound_wall_time(moment, zone) == "2024-06-03 08:00:01"
    assert lower_bound_wall_time(moment, ZoneInfo("UTC")) == "2024-06-03 12:00:00"


def test_eu_account_filters_and_parses_in_utc(make_client: ClientFactory) -> None:
    with LocalSurveyGizmo(API_TOKEN, API_TOKEN_SECRET, time_zone="UTC") as server:
        server.add_survey(PROFILE_SURVEY)
        ids = add_responses(server, 3, dt.datetime(2024, 7, 1, 23, 58, tzinfo=UTC))
        client = make_client(base_url=server.base_url, region="EU")
        day = dt.datetime(2024, 7, 2, tzinfo=UTC)

        records = list(client.list_responses(PROFILE_SURVEY_ID, day, day + dt.timedelta(days=1)))

        assert [r["id"] for r in records] == ids[2:]
        assert server.requests[0].params["filter[value][0]"] == "2024-07-02 00:00:00"
    assert client.account_zone.key == "UTC"


# -- hosts, rate limit, counter -----------------------------------------------------------------


def test_region_and_legacy_hosts() -> None:
    assert SurveyGizmoClient("t", "s").base_url == "https://api.alchemer.com"
    assert SurveyGizmoClient("t", "s", region="EU").base_url == "https://api.alchemer.eu"
    assert SurveyGizmoClient("t", "s", region="CA", legacy_host=True).base_url == "https://restapica.surveygizmo.com"
    assert SurveyGizmoClient("t", "s", region="US").account_zone.key == "America/New_York"
    with pytest.raises(ValueError, match="region"):
        SurveyGizmoClient("t", "s", region="AU")


def test_token_bucket_never_exceeds_the_rate_in_any_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(240, burst=1, clock=clock)
    moments = []
    for _ in range(720):
        bucket.acquire()
        moments.append(clock.now)

    for index, moment in enumerate(moments):
        in_next_minute = sum(1 for later in moments[index:] if later < moment + 60)
        assert in_next_minute <= 240
    assert moments[-1] == pytest.approx(719 * 0.25)


def test_token_bucket_is_thread_safe() -> None:
    class FrozenClock(FakeClock):
        def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)

    bucket = TokenBucket(120, burst=3, clock=FrozenClock())
    waits: list[float] = []
    lock = threading.Lock()

    def take(count: int) -> None:
        for _ in range(count):
            wait = bucket.acquire()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=take, args=(25,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    expected = [0.0, 0.0, 0.0] + [0.5 * slot for slot in range(1, 198)]
    assert sorted(waits) == pytest.approx(expected)


def test_client_calls_are_spaced_by_the_configured_rate(sg_server: LocalSurveyGizmo, make_client: ClientFactory, clock: FakeClock) -> None:
    add_responses(sg_server, 1200, DAY, step=dt.timedelta(seconds=30))
    client = make_client(calls_per_minute=30)

    list_day(client)

    assert client.calls_made == 4
    assert clock.sleeps == [2.0, 2.0, 2.0]
