"""SES's account suppression list kept in step with members' statuses (`ses_suppression_sync`), over
real HTTP: real boto3 against the local SES endpoint's suppression list (the proxy), the real mongod."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
from botocore.awsrequest import AWSResponse
from bson import ObjectId

from panel_pipeline.local.ses_proxy import SesFaultProxy
from panel_pipeline.mailer.assets import ses_suppression_sync
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.ses import SesAdminError
from panel_pipeline.mailer.store import SuppressionStore
from panel_pipeline.mailer.suppression import PULL_OVERLAP, SesSuppressionList, SyncReport, sync_suppression
from panel_pipeline.shared.resources import MongoResource
from panel_pipeline_tests.clock import ManualClock

PUT = "PUT /v2/email/suppression/addresses"
LIST = "GET /v2/email/suppression/addresses"
NO_UPSTREAM = "http://127.0.0.1:9"  # the suppression list is answered by the proxy itself
HOUR_AGO = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def running_proxy() -> Iterator[SesFaultProxy]:
    proxy = SesFaultProxy(NO_UPSTREAM)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(running_proxy: SesFaultProxy) -> SesFaultProxy:
    """The local endpoint with an empty suppression list and no requests counted."""
    running_proxy.reset()
    return running_proxy


def ses_resource(proxy: SesFaultProxy, **settings: Any) -> SesResource:
    return SesResource(
        region_name="eu-west-2",
        from_address="Panel <panel@example.org>",
        endpoint_url=proxy.url,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        unsubscribe_url="https://panel.example/unsubscribe?user={user}&token={token}",
        unsubscribe_secret="s",
        link_hosts="panel.example",
        **{"suppression_calls_per_second": 1000.0, **settings},
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def sync(mongo_uri, mongo_db, proxy, instance):
    """Materialize `ses_suppression_sync` once; returns its metadata and the run's log text."""

    def run(**settings: Any) -> tuple[dict[str, Any], str]:
        resources = {
            "mongo": MongoResource(uri=mongo_uri, database=mongo_db.name),
            "ses": ses_resource(proxy, **settings),
        }
        result = dg.materialize([ses_suppression_sync], instance=instance, resources=resources)
        (materialization,) = result.asset_materializations_for_node("ses_suppression_sync")
        logged = " ".join(str(entry.user_message) for entry in instance.all_logs(result.run_id))
        return {key: value.value for key, value in materialization.metadata.items()}, logged + str(materialization)

    return run


@pytest.fixture
def sync_now(mongo_db, proxy):
    """One sync as the asset runs it, without a Dagster run (faster): returns its report."""

    def run() -> SyncReport:
        store = SuppressionStore(mongo_db.users, mongo_db.pipeline_state)
        store.ensure_indexes()
        return sync_suppression(ses_resource(proxy).suppression_list(), store)

    return run


def member(db, email: str, status: str = "active", changed_at: dt.datetime | None = None) -> ObjectId:
    doc: dict[str, Any] = {"email": email, "first_name": "Ann", "status": status}
    if changed_at is not None:
        doc["status_changed_at"] = changed_at
    return db.users.insert_one(doc).inserted_id


def on_list(proxy: SesFaultProxy) -> dict[str, str]:
    return {entry.email_address: entry.reason for entry in proxy.suppression_list.entries()}


def test_bounced_and_unsubscribed_members_are_pushed_with_their_reason_once(sync, proxy, mongo_db):
    member(mongo_db, "ann@panel.example", "bounced", dt.datetime.now(dt.UTC))
    member(mongo_db, "bob@panel.example", "unsubscribed")  # the backend set no status_changed_at: pushed too
    member(mongo_db, "cat@panel.example", "active")
    member(mongo_db, "dan@panel.example", "deleted")

    first, logged = sync()
    assert on_list(proxy) == {"ann@panel.example": "BOUNCE", "bob@panel.example": "COMPLAINT"}
    assert (first["pushed_bounce"], first["pushed_complaint"], first["ses_calls"]) == (1, 1, 3)  # a list call, 2 puts
    assert mongo_db.users.count_documents({"ses_suppressed_at": {"$type": "date"}}) == 2
    assert "@" not in logged

    second, _ = sync()
    assert (second["pushed_bounce"], second["pushed_complaint"]) == (0, 0)
    assert proxy.requests()[PUT] == 2  # the second run put nothing again
    assert second["skipped"] == 2  # our own two entries came back in the pull and changed nobody


def test_addresses_ses_suppressed_mark_active_members_with_the_reason_and_others_are_ignored(sync, proxy, mongo_db):
    ann = member(mongo_db, "ann@panel.example", changed_at=dt.datetime.now(dt.UTC) - 2 * HOUR_AGO)
    bob = member(mongo_db, "bob@panel.example")
    proxy.suppress("Ann@Panel.example", "BOUNCE")
    proxy.suppress("bob@panel.example", "COMPLAINT")
    proxy.suppress("stranger@elsewhere.example", "BOUNCE")

    metadata, logged = sync()

    users = {doc["_id"]: doc for doc in mongo_db.users.find()}
    assert (users[ann]["status"], users[ann]["status_reason"]) == ("bounced", "SES suppression list: BOUNCE")
    assert (users[bob]["status"], users[bob]["status_reason"]) == ("unsubscribed", "SES suppression list: COMPLAINT")
    assert all(isinstance(users[key]["status_changed_at"], dt.datetime) for key in (ann, bob))
    assert mongo_db.users.count_documents({}) == 2  # the stranger is no member and became none
    assert (metadata["pulled"], metadata["marked_bounced"], metadata["marked_unsubscribed"]) == (3, 1, 1)
    assert metadata["pulled_outcomes"] == {"marked": 2, "not_member": 1}
    assert (metadata["pushed_bounce"], metadata["pushed_complaint"]) == (0, 0)  # already on SES's list
    assert proxy.requests()[PUT] == 0
    assert "@" not in logged


def test_a_member_whose_status_changed_after_ses_listed_them_is_not_touched_and_taken_off(sync_now, proxy, mongo_db):
    listed_at = dt.datetime.now(dt.UTC) - HOUR_AGO
    reactivated = member(mongo_db, "ann@panel.example", changed_at=listed_at + dt.timedelta(minutes=1))
    proxy.suppress("ann@panel.example", "BOUNCE", at=listed_at)

    report = sync_now()

    doc = mongo_db.users.find_one({"_id": reactivated})
    assert doc["status"] == "active"
    assert abs(doc["status_changed_at"] - (listed_at + dt.timedelta(minutes=1))) < dt.timedelta(milliseconds=1)
    assert report.pulled_outcomes == {"changed_later": 1}
    assert (report.deleted, on_list(proxy)) == (1, {})
    assert "ses_suppressed_at" not in doc


def test_a_member_the_backend_reactivates_is_taken_off_the_list_and_pushed_again_if_bounced_again(
    sync_now, proxy, mongo_db
):
    ann = member(mongo_db, "ann@panel.example", "bounced")
    sync_now()
    assert on_list(proxy) == {"ann@panel.example": "BOUNCE"}

    now = dt.datetime.now(dt.UTC)
    mongo_db.users.update_one({"_id": ann}, {"$set": {"status": "active", "status_changed_at": now}})
    assert (sync_now().deleted, on_list(proxy)) == (1, {})
    assert mongo_db.users.find_one({"_id": ann})["status"] == "active"

    now = dt.datetime.now(dt.UTC)
    mongo_db.users.update_one({"_id": ann}, {"$set": {"status": "bounced", "status_changed_at": now}})
    sync_now()
    assert on_list(proxy) == {"ann@panel.example": "BOUNCE"}


def test_the_pull_reads_only_what_is_new_since_the_last_pull(sync_now, proxy, mongo_db):
    member(mongo_db, "ann@panel.example")
    proxy.suppress("old@elsewhere.example", "BOUNCE", at=dt.datetime.now(dt.UTC) - 2 * PULL_OVERLAP)
    first = sync_now()
    assert first.pull_window is not None and first.pull_window[0] is None  # the first pull reads it all
    assert first.pulled == 1

    proxy.suppress("ann@panel.example", "COMPLAINT")
    second = sync_now()

    assert second.pull_window is not None and second.pull_window[0] == first.pull_window[1] - PULL_OVERLAP
    assert (second.pulled, second.marked["unsubscribed"]) == (1, 1)  # the old entry was not read again
    assert mongo_db.users.find_one({"email": "ann@panel.example"})["status"] == "unsubscribed"


def test_calls_are_paced_and_a_run_stops_at_its_call_limit(proxy, mongo_db):
    for index in range(5):
        member(mongo_db, f"m{index}@panel.example", "bounced")
    clock = ManualClock(dt.datetime.now(dt.UTC))
    client_calls: list[float] = []
    store = SuppressionStore(mongo_db.users, mongo_db.pipeline_state, clock)

    def paced_list(max_calls: int) -> SesSuppressionList:
        client = sesv2_client(proxy)
        client.meta.events.register("before-send.sesv2", lambda **_: client_calls.append(clock.monotonic()))
        return SesSuppressionList(client, calls_per_second=1.0, max_calls=max_calls, clock=clock)

    first = sync_suppression(paced_list(max_calls=3), store, clock)
    assert (first.calls, first.calls_used_up, sum(first.pushed.values())) == (3, True, 2)  # one list call, two puts
    clock.advance(3600)  # the next hourly run
    second = sync_suppression(paced_list(max_calls=10), store, clock)
    assert (second.calls, second.calls_used_up, sum(second.pushed.values())) == (4, False, 3)  # the other three

    assert proxy.requests()[PUT] == 5 and proxy.requests()[LIST] == 2
    assert len(client_calls) == 7
    gaps = [later - earlier for earlier, later in zip(client_calls, client_calls[1:], strict=False)]
    assert min(gaps) >= 1.0  # SES's one call a second, on the clock the bucket sleeps on: no real waiting
    assert len(on_list(proxy)) == 5


def sesv2_client(proxy: SesFaultProxy) -> Any:
    return ses_resource(proxy).session().client("sesv2", endpoint_url=proxy.url)


def test_a_crash_between_a_put_and_its_mark_loses_nobody_and_puts_nobody_twice(proxy, mongo_db):
    for index in range(4):
        member(mongo_db, f"m{index}@panel.example", "bounced")
    store = SuppressionStore(mongo_db.users, mongo_db.pipeline_state)
    crashing = sesv2_client(proxy)
    answered: list[str] = []

    def crash_after_the_second_put(**_: Any) -> None:
        answered.append("put")
        if len(answered) == 2:  # SES took the address; the worker dies before the mark is written
            raise RuntimeError("worker killed")

    crashing.meta.events.register("after-call.sesv2.PutSuppressedDestination", crash_after_the_second_put)
    with pytest.raises(RuntimeError):
        sync_suppression(SesSuppressionList(crashing, 1000.0, 100), store)
    assert mongo_db.users.count_documents({"ses_suppressed_at": {"$type": "date"}}) == 1

    resumed = sync_suppression(SesSuppressionList(sesv2_client(proxy), 1000.0, 100), store)

    # The pull found the unmarked address on SES's list and marked it: only the two never tried are put.
    assert (resumed.pulled_outcomes["already"], sum(resumed.pushed.values())) == (2, 2)
    assert proxy.requests()[PUT] == 4 and len(on_list(proxy)) == 4
    assert mongo_db.users.count_documents({"ses_suppressed_at": {"$type": "date"}}) == 4


class _Body:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.payload


def test_an_ses_error_stops_the_sync_with_a_redacted_message(proxy, mongo_db):
    member(mongo_db, "ann@panel.example", "unsubscribed")
    refusing = sesv2_client(proxy)
    refusal = b'{"message": "User is not authorized to suppress ann@panel.example"}'
    refusing.meta.events.register(
        "before-send.sesv2.PutSuppressedDestination",
        lambda request, **_: AWSResponse(
            request.url, 403, {"x-amzn-ErrorType": "AccessDeniedException"}, _Body(refusal)
        ),
    )
    store = SuppressionStore(mongo_db.users, mongo_db.pipeline_state)

    with pytest.raises(SesAdminError) as stopped:
        sync_suppression(SesSuppressionList(refusing, 1000.0, 100), store)

    assert "AccessDeniedException" in str(stopped.value) and "@" not in str(stopped.value)
    assert stopped.value.__cause__ is None and stopped.value.__suppress_context__
    assert mongo_db.users.count_documents({"ses_suppressed_at": {"$type": "date"}}) == 0  # pushed next time
