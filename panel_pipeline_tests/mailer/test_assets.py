"""The mailings asset over real HTTP to the local SES endpoint, on a real mongod."""

import datetime as dt

import dagster as dg
import pytest

from panel_pipeline.local.ses_proxy import daily_quota_exceeded
from panel_pipeline.mailer.assets import email_templates, mailings, transactional_mail
from panel_pipeline.mailer.recipients import mark_reminded
from panel_pipeline.mailer.resources import SesResource
from panel_pipeline.mailer.sensors import mailings_queue_sensor, transactional_mail_queue_sensor
from panel_pipeline.shared import invitations
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline_tests.mailer.conftest import CONFIGURATION_SET, SURVEY

UTC = dt.UTC


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def send(instance, resources, mailing_id):
    key = str(mailing_id)
    instance.add_dynamic_partitions("mailings", [key])
    return dg.materialize([mailings], partition_key=key, instance=instance, resources=resources, raise_on_error=False)


def send_transactional(instance, resources):
    """What the daemon does: one sensor tick, and the batch run it asks for."""
    tick = transactional_mail_queue_sensor(
        dg.build_sensor_context(instance=instance, resources={"mongo": resources["mongo"]})
    )
    (request,) = tick.run_requests
    return dg.materialize(
        [transactional_mail],
        run_config=request.run_config,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def users(db, *specs):
    return db.users.insert_many(
        [
            {"email": f"user{i}@panel.example", "first_name": name, "status": status}
            for i, (name, status) in enumerate(specs)
        ]
    ).inserted_ids


def test_invitation_is_sent_once_to_active_members_and_marks_them_invited(instance, resources, mongo_db, local_ses):
    active, evil, gone = users(mongo_db, ("Ann", "active"), ("<script>x</script>", "active"), ("Bob", "unsubscribed"))
    sample_id = mongo_db.samples.insert_one({"name": "s"}).inserted_id
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": active}, {"user_id": evil}, {"user_id": gone}],
        }
    ).inserted_id
    mongo_db.sample_members.insert_many(
        [
            {"sample_id": sample_id, "user_id": uid, "invited_at": None, "mailing_id": mailing_id}
            for uid in (active, evil, gone)
        ]
    )
    tick = mailings_queue_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": resources["mongo"]}))
    assert tick.run_requests[0].tags["panel/mail_kind"] == "bulk"

    result = send(instance, resources, mailing_id)
    assert result.success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert doc["processed"] and doc["status"] == "done"
    assert {k: v for k, v in doc["counts"].items() if v} == {"sent": 2, "suppressed": 1}
    emails = local_ses.emails()
    assert sorted(e["destination"]["to"][0] for e in emails) == ["user0@panel.example", "user1@panel.example"]
    escaped = next(e for e in emails if e["destination"]["to"][0] == "user1@panel.example")
    assert "<script>x</script>" not in escaped["body"]["html"] and "&lt;script&gt;" in escaped["body"]["html"]
    assert all("List-Unsubscribe" in str(e.get("headers")) for e in emails)
    invited = {m["user_id"] for m in mongo_db.sample_members.find({"invited_at": {"$ne": None}})}
    assert invited == {active, evil}
    assert mongo_db.mail_log.find_one({"user_id": gone})["status"] == "suppressed"

    again = send(instance, resources, mailing_id)  # re-materialised: reports, sends nothing
    assert again.success and len(local_ses.emails()) == 2
    metadata = again.asset_materializations_for_node("mailings")[0].metadata
    assert metadata["recipients_sent"].value == 2
    for value in metadata.values():
        assert "@" not in str(value.value)


def test_a_reminder_reaches_its_members_who_have_not_completed_and_records_it_once(
    instance, resources, mongo_db, local_ses
):
    ann, cat, bob = users(mongo_db, ("Ann", "active"), ("Cat", "active"), ("Bob", "unsubscribed"))
    close_at = dt.datetime(2026, 6, 14, 16, 0, tzinfo=UTC)
    sample_id = mongo_db.samples.insert_one(
        {
            "name": "s",
            "mailing": {"template": "new_survey", "default_data": SURVEY},
            "fieldwork_state": {"close_at": close_at},
        }
    ).inserted_id
    invited_at = dt.datetime.now(UTC) - dt.timedelta(days=2)
    mongo_db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "invited_at": invited_at} for uid in (ann, cat, bob)]
    )
    mongo_db.sample_members.update_one({"user_id": cat}, {"$set": {"completed_at": invited_at}})  # since the stamp
    now = dt.datetime.now(UTC)
    reminder_id = invitations.stamp_pending_reminder(mongo_db, sample_id, [ann, cat, bob], now)
    assert invitations.create_missing_mailings(mongo_db, now) == [reminder_id]

    result = send(instance, resources, reminder_id)

    assert result.success
    doc = mongo_db.mailings.find_one({"_id": reminder_id})
    assert doc["status"] == "done" and {k: v for k, v in doc["counts"].items() if v} == {"sent": 1, "suppressed": 1}
    (email,) = local_ses.emails()
    assert email["destination"]["to"] == ["user0@panel.example"]
    assert "closes on Sunday 14 June" in email["subject"] and "Hi Ann" in email["body"]["text"]
    members = {m["user_id"]: m for m in mongo_db.sample_members.find()}
    assert members[ann]["reminders"] == 1 and as_utc(members[ann]["reminded_at"]) >= now.replace(microsecond=0)
    assert "reminded_at" not in members[cat] and "reminded_at" not in members[bob]  # completed; suppressed
    # A run that stopped after recording, before completing the mailing, records nobody twice.
    assert mark_reminded(mongo_db, doc, [ann], dt.datetime.now(UTC)) == 0
    assert send(instance, resources, reminder_id).success and len(local_ses.emails()) == 1
    assert mongo_db.sample_members.find_one({"user_id": ann})["reminders"] == 1


def test_a_reminder_of_a_sample_whose_fieldwork_closed_before_it_went_reaches_nobody(
    instance, resources, mongo_db, local_ses
):
    (ann,) = users(mongo_db, ("Ann", "active"))
    state = {"status": "open", "close_at": dt.datetime.now(UTC) + dt.timedelta(days=3)}
    sample_id = mongo_db.samples.insert_one(
        {"name": "s", "mailing": {"template": "new_survey", "default_data": SURVEY}, "fieldwork_state": state}
    ).inserted_id
    mongo_db.sample_members.insert_one({"sample_id": sample_id, "user_id": ann, "invited_at": dt.datetime.now(UTC)})
    now = dt.datetime.now(UTC)
    reminder_id = invitations.stamp_pending_reminder(mongo_db, sample_id, [ann], now)
    invitations.create_missing_mailings(mongo_db, now)
    mongo_db.samples.update_one({"_id": sample_id}, {"$set": {"fieldwork_state.status": "closed"}})  # every cell full

    assert send(instance, resources, reminder_id).success
    assert mongo_db.mailings.find_one({"_id": reminder_id})["status"] == "done" and local_ses.emails() == []
    assert "reminded_at" not in mongo_db.sample_members.find_one({"user_id": ann})


def test_transactional_mail_has_no_unsubscribe_header_and_keeps_its_token_out_of_logs(
    instance, resources, mongo_db, local_ses
):
    users(mongo_db, ("Cat", "active"))
    token_link = "https://panel.example/reset?token=SECRET-TOKEN-123"
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "password_recovery",
            "recipients": [
                {"email": " User0@Panel.example ", "data": {"reset_url": token_link, "expires_in_minutes": 60}}
            ],
        }
    ).inserted_id
    result = send_transactional(instance, resources)
    assert result.success and mongo_db.mailings.find_one({"_id": mailing_id})["status"] == "done"
    (email,) = local_ses.emails()
    assert "SECRET-TOKEN-123" in email["body"]["text"]
    assert "List-Unsubscribe" not in str(email.get("headers"))
    logs = "\n".join(str(event.user_message) for event in instance.all_logs(result.run_id))
    assert "SECRET-TOKEN-123" not in logs and "user0@panel.example" not in logs.lower()


def test_missing_variable_fails_that_recipient_alone(instance, resources, mongo_db, local_ses):
    users(mongo_db, ("Dee", "active"), ("Eve", "active"))
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "transactional",
            "template": "password_recovery",
            "default_data": {"expires_in_minutes": 60},
            "recipients": [
                {"email": "user0@panel.example", "data": {"reset_url": "https://x/1"}},
                {"email": "user1@panel.example", "data": {}},
            ],
        }
    ).inserted_id
    assert send_transactional(instance, resources).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert {k: v for k, v in doc["counts"].items() if v} == {"sent": 1, "failed": 1}
    assert "reset_url" in mongo_db.mail_log.find_one({"status": "failed"})["error"]


def test_transactional_mail_goes_in_one_run_per_tick_and_a_rejected_one_fails_alone(
    instance, resources, mongo_db, local_ses
):
    users(mongo_db, ("Fay", "active"), ("Gus", "active"))
    welcome = [
        mongo_db.mailings.insert_one(
            {
                "processed": False,
                "kind": "transactional",
                "template": "welcome",
                "default_data": {"profile_survey_url": "https://survey.example/p"},
                "recipients": [{"email": f"user{i}@panel.example"}],
            }
        ).inserted_id
        for i in range(2)
    ]
    broken = mongo_db.mailings.insert_one(
        {"processed": False, "kind": "transactional", "template": "welcome", "recipients": [{"user_id": "not-an-id"}]}
    ).inserted_id
    bulk = mongo_db.mailings.insert_one(
        {"processed": False, "kind": "bulk", "template": "new_survey", "recipients": [{"email": "user0@panel.example"}]}
    ).inserted_id
    context = dg.build_sensor_context(instance=instance, resources={"mongo": resources["mongo"]})
    assert [r.partition_key for r in mailings_queue_sensor(context).run_requests] == [str(bulk)], (
        "bulk runs leave transactional mail alone"
    )

    result = send_transactional(instance, resources)
    assert result.success
    statuses = {doc["_id"]: doc["status"] for doc in mongo_db.mailings.find({"_id": {"$in": [*welcome, broken]}})}
    assert statuses == {welcome[0]: "done", welcome[1]: "done", broken: "failed"}
    assert mongo_db.mailings.find_one({"_id": broken})["error"] == "recipients.0.user_id: 'not-an-id' is not an id"
    assert sorted(e["destination"]["to"][0] for e in local_ses.emails()) == [
        "user0@panel.example",
        "user1@panel.example",
    ]
    metadata = result.asset_materializations_for_node("transactional_mail")[0].metadata
    assert (metadata["mailings_done"].value, metadata["mailings_rejected"].value) == (2, 1)


def test_unknown_template_fails_the_mailing_naming_the_field(instance, resources, mongo_db):
    mailing_id = mongo_db.mailings.insert_one(
        {"processed": False, "template": "nope", "recipients": [{"email": "a@b.c"}]}
    ).inserted_id
    assert not send(instance, resources, mailing_id).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert doc["status"] == "failed" and doc["error"].startswith("template: no template 'nope'")


def test_templates_are_synced_under_versioned_names(instance, resources, local_ses):
    result = dg.materialize([email_templates], instance=instance, resources={"ses": resources["ses"]})
    assert result.success
    assert sorted(name.split("-")[1] for name in local_ses.templates()) == [
        "new_survey",
        "paid",
        "password_recovery",
        "points_registered",
        "survey_reminder",
        "welcome",
    ]


@pytest.fixture
def proxied(resources, ses_proxy):
    """The resources with SES behind the fault proxy and a configuration set, as in production."""
    settings = {**resources["ses"].model_dump(), "endpoint_url": ses_proxy.url, "configuration_set": CONFIGURATION_SET}
    return {**resources, "ses": SesResource(**settings)}


def test_a_configuration_set_without_send_events_refuses_a_bulk_mailing(
    instance, proxied, mongo_db, ses_proxy, ses_server
):
    (member,) = users(mongo_db, ("Ann", "active"))
    ses_proxy.set_event_destinations(
        CONFIGURATION_SET,
        [
            {
                "Name": "bounces",
                "Enabled": True,
                "MatchingEventTypes": ["BOUNCE", "COMPLAINT"],
                "SnsDestination": {"TopicArn": "arn:aws:sns:eu-west-2:000000000000:t"},
            },
        ],
    )
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "recipients": [{"user_id": member}],
        }
    ).inserted_id
    assert not send(instance, proxied, mailing_id).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert doc["status"] == "failed" and doc["attempts"] == 1
    assert doc["error"].startswith(
        f"SES configuration set '{CONFIGURATION_SET}' has no enabled SNS event destination matching SEND"
    )
    assert ses_proxy.calls() == [] and ses_server.emails() == []


def test_a_paused_mailing_is_expanded_once_and_who_left_meanwhile_is_not_mailed(
    instance, proxied, mongo_db, ses_proxy, ses_server
):
    ann, bob, cat = users(mongo_db, ("Ann", "active"), ("Bob", "active"), ("Cat", "active"))
    sample_id = mongo_db.samples.insert_one({"name": "s"}).inserted_id
    mongo_db.sample_members.insert_many(
        [{"sample_id": sample_id, "user_id": uid, "invited_at": None} for uid in (ann, bob, cat)]
    )
    mailing_id = mongo_db.mailings.insert_one(
        {
            "processed": False,
            "kind": "bulk",
            "template": "new_survey",
            "default_data": SURVEY,
            "sample_id": sample_id,
        }
    ).inserted_id
    ses_proxy.inject(daily_quota_exceeded())
    assert send(instance, proxied, mailing_id).success
    paused = mongo_db.mailings.find_one({"_id": mailing_id})
    assert paused["status"] == "postponed" and paused["expansion"] == {
        "recipients": 3,
        "duplicates": 0,
        "missing_members": 0,
        "completed_members": 0,
    }
    expanded_at = paused["expanded_at"]

    # During the pause: Bob unsubscribes, and a member joins the sample (the updater invites newcomers itself).
    mongo_db.users.update_one({"_id": bob}, {"$set": {"status": "unsubscribed"}})
    (dan,) = mongo_db.users.insert_many(
        [{"email": "dan@panel.example", "first_name": "Dan", "status": "active"}]
    ).inserted_ids
    mongo_db.sample_members.insert_one({"sample_id": sample_id, "user_id": dan, "invited_at": None})
    for paused_until in (mongo_db.mailings, mongo_db.mail_log):  # the hour's pause is over
        paused_until.update_many({"retry_at": {"$ne": None}}, {"$set": {"retry_at": dt.datetime.now(UTC)}})

    assert send(instance, proxied, mailing_id).success
    doc = mongo_db.mailings.find_one({"_id": mailing_id})
    assert doc["status"] == "done" and doc["expanded_at"] == expanded_at
    assert {k: v for k, v in doc["counts"].items() if v} == {"sent": 2, "suppressed": 1}
    assert mongo_db.mail_log.count_documents({"mailing_id": mailing_id, "user_id": dan}) == 0, "not expanded again"
    assert sorted(e["destination"]["to"][0] for e in ses_server.emails()) == [
        "user0@panel.example",
        "user2@panel.example",
    ]
    suppressed = mongo_db.mail_log.find_one({"user_id": bob})
    assert suppressed["status"] == "suppressed" and "changed after the mailing was planned" in suppressed["error"]
    assert mongo_db.mail_log.count_documents({"mailing_id": mailing_id, "data": {"$exists": True}}) == 0, (
        "no token outlives its row"
    )
    assert {m["user_id"] for m in mongo_db.sample_members.find({"invited_at": {"$ne": None}})} == {ann, cat}


def test_a_transactional_batch_shares_one_gateway_and_checks_its_template_once(
    instance, proxied, mongo_db, ses_proxy, ses_server
):
    users(mongo_db, ("Fay", "active"), ("Gus", "active"), ("Hal", "active"))
    for i in range(3):
        mongo_db.mailings.insert_one(
            {
                "processed": False,
                "kind": "transactional",
                "template": "welcome",
                "default_data": {"profile_survey_url": "https://survey.example/p"},
                "recipients": [{"email": f"user{i}@panel.example"}],
            }
        )
    assert send_transactional(instance, proxied).success
    assert len(ses_server.emails()) == 3
    template_reads = {k: n for k, n in ses_proxy.requests().items() if k.startswith("GET /v2/email/templates/")}
    assert list(template_reads.values()) == [1], template_reads
    assert ses_proxy.requests()["GET /v1/account"] + ses_proxy.requests()["GET /v2/email/account"] == 1, (
        "one GetAccount per run"
    )
