"""The local respondent simulator: invited members complete their survey as the backend would record it.

A member who was mailed an invitation to a sample (a `mail_log` row `sent` of a mailing with
`invitation_for_sample`) completes the sample's survey with the probability of their cell (age band x
gender, the band derived from `birth_year` as the Sampler derives it), after a delay drawn from a
lognormal curve (median 12 h: three in four within 24 h, nine in ten within 48 h, a tail of days).
Each reminder that reached them (a `sent` row of a mailing whose `reminder_for_sample` is the same
sample) lifts the probability by `reminder_lift` (p x (1 + lift) per reminder) with a delay of its
own from the reminder. A completion is what the backend sees: a Complete response created in SurveyGizmo over its
HTTP API (the member's id in the hidden `panel_id`), then a `transactions` document
`{user_id, survey_id, response_id, points, created_at, processed: false}`. A member is screened out at
survey entry, and never completes, when one of their cells is closed (`fieldwork_state.closed_cells`)
or has no room left: its `cap` (`by_cell`) less the survey's completes now (its `transactions`, by the
completers' profiles). A survey platform counts its quotas live so (Decipher counts respondents still
in the survey); the pipeline's own count follows only once it has processed the transactions and run
a fieldwork pass. Delays are in fieldwork hours, read on the pipeline's own fieldwork clock
(`FieldworkTiming`: scaled, 3600 a simulated hour per real second in the local run; or stepped by
a test), so the simulator and the pipeline agree on how much time has passed.

Invariants:
* Decided by a seeded hash: whether (member, survey) completes, after each reminder too, and how long
  it takes are functions of `(seed, member, survey)`, never of the pass or the order rows are read in,
  so a restart decides exactly as before. The only state between passes is a few counters.
* Once: the transaction is upserted on `(user_id, survey_id)`, so a member never has two for one
  survey; the response is looked up in SurveyGizmo by `panel_id` before one is created, so a stop
  between the response and the transaction reuses the response on the next pass.
* Bounded memory: invitations are read a page of `PAGE_SIZE` rows at a time (with their profiles,
  reminders and transactions one query each), and only samples invited within `lookback` are read.
* Logs and the status page name samples, surveys and counts; never an address (`email` is never read).
* Local only: production code never imports this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from statistics import NormalDist
from typing import Any

import requests
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.database import Database

from panel_pipeline.extractor.transactions import SURVEYGIZMO_ID
from panel_pipeline.sampler.resources import FieldworkTiming
from panel_pipeline.shared.clock import SYSTEM_CLOCK, Clock, FieldworkClock
from panel_pipeline.shared.contract import (
    AGE_BAND_LOWER_BOUNDS,
    MAIL_LOG,
    MAILINGS,
    PROFILE_CATEGORIES,
    SAMPLES,
    TRANSACTIONS,
    USERS,
)
from panel_pipeline.shared.mongo import as_utc
from panel_pipeline.shared.privacy import describe_error

LOG = logging.getLogger(__name__)

SENT = "sent"  # mail_log status of a row SES accepted
PANEL_ID_SHORTNAME = "panel_id"
CHOICE_TYPES = frozenset({"RADIO", "MENU"})
PAGE_SIZE = 1000
HTTP_TIMEOUT_SECONDS = 10.0
HOUR = dt.timedelta(hours=1)
RESPONSE_ORDER = [("survey_id", ASCENDING), ("user_id", ASCENDING)]  # the Sampler's index on transactions

# True completion rates by age band and gender: lowest for young men, highest for women 65-74. A
# member of another gender (or none stated) gets the mean of the two; one with no band the default.
DEFAULT_RATES: dict[str, dict[str, float]] = {
    "male": {"18-24": 0.04, "25-34": 0.07, "35-44": 0.10, "45-54": 0.14, "55-64": 0.20, "65-74": 0.28, "75+": 0.22},
    "female": {"18-24": 0.06, "25-34": 0.10, "35-44": 0.14, "45-54": 0.19, "55-64": 0.26, "65-74": 0.35, "75+": 0.28},
}
DEFAULT_RATE = 0.15


def default_cell_rates() -> dict[str, float]:
    """DEFAULT_RATES as `{"<age_band>|<gender>": rate}`."""
    return {f"{band}|{gender}": rate for gender, bands in DEFAULT_RATES.items() for band, rate in bands.items()}


@dataclass(frozen=True)
class RespondentSettings:
    """How members respond. `rates` maps `"<age_band>|<gender>"` to a probability; a cell it does not
    list falls back to the mean over genders of its band, then to `default_rate`."""

    seed: int = 0
    rates: Mapping[str, float] = field(
        default_factory=lambda: {
            f"{band}|{g}": rate for g, bands in DEFAULT_RATES.items() for band, rate in bands.items()
        }
    )
    default_rate: float = DEFAULT_RATE
    reminder_lift: float = 0.3  # each reminder multiplies the probability by 1 + lift
    median_delay_hours: float = 12.0
    delay_spread: float = 1.0  # sigma of the log delay
    max_delay_hours: float = 14 * 24.0
    lookback: dt.timedelta = dt.timedelta(days=14)  # real time: samples invited longer ago are left alone

    def __post_init__(self) -> None:
        for cell, rate in {**self.rates, "default": self.default_rate}.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"rate of {cell} must be in [0, 1], got {rate}")
        if self.reminder_lift < 0:
            raise ValueError(f"reminder_lift must be 0 or more, got {self.reminder_lift}")


# --- decisions: pure -------------------------------------------------------------------------------


def age_band(birth_year: Any, year: int) -> str | None:
    """The band of someone born in `birth_year`, in `year` (as the Sampler derives it); None under 18."""
    if isinstance(birth_year, bool) or not isinstance(birth_year, int | float) or not math.isfinite(birth_year):
        return None
    index = bisect_right(AGE_BAND_LOWER_BOUNDS, year - int(birth_year)) - 1
    return PROFILE_CATEGORIES["age_band"][index] if index >= 0 else None


def completion_rate(settings: RespondentSettings, profile: Mapping[str, Any], year: int) -> float:
    """The member's probability of completing an invitation, from their cell."""
    band = age_band(profile.get("birth_year"), year)
    if band is None:
        return settings.default_rate
    gender = profile.get("gender")
    if f"{band}|{gender}" in settings.rates:
        return settings.rates[f"{band}|{gender}"]
    of_band = [rate for cell, rate in settings.rates.items() if cell.split("|")[0] == band]
    return sum(of_band) / len(of_band) if of_band else settings.default_rate


Cell = tuple[str, str]  # (target, category), as in fieldwork_state.by_cell


def cells_of(profile: Mapping[str, Any], cells: Iterable[Cell], year: int) -> list[Cell]:
    """Those of `cells` the member belongs to (the age band derived from `birth_year`)."""
    values = {**profile, "age_band": age_band(profile.get("birth_year"), year) or profile.get("age_band")}
    return [
        (target, category)
        for target, category in cells
        if "|".join(str(values.get(name)) for name in target.split("|")) == category
    ]


def in_closed_cell(profile: Mapping[str, Any], closed_cells: Sequence[Mapping[str, Any]], year: int) -> bool:
    """Whether the member belongs to one of the sample's closed cells (`fieldwork_state.closed_cells`)."""
    keys = [(str(cell.get("target", "")), str(cell.get("category"))) for cell in closed_cells]
    return bool(cells_of(profile, keys, year))


@dataclass
class QuotaRoom:
    """A sample's quotas at survey entry: its closed cells, and each open cell's room (completes it
    may still take before its cap), counted down as members complete."""

    closed: list[Mapping[str, Any]]
    room: dict[Cell, float]

    def admits(self, profile: Mapping[str, Any], year: int) -> bool:
        if in_closed_cell(profile, self.closed, year):
            return False
        return all(self.room[cell] >= 1 for cell in cells_of(profile, self.room, year))

    def completed(self, profile: Mapping[str, Any], year: int) -> None:
        for cell in cells_of(profile, self.room, year):
            self.room[cell] -= 1


def unit_draw(seed: int, user_id: str, survey_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by its arguments (blake2b), the same in every process and on every pass."""
    digest = hashlib.blake2b(f"{seed}:{user_id}:{survey_id}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def simulated_delay(settings: RespondentSettings, user_id: str, survey_id: str, purpose: str) -> dt.timedelta:
    """How long after a mail the member completes, in simulated time: lognormal, capped."""
    u = min(max(unit_draw(settings.seed, user_id, survey_id, f"delay:{purpose}"), 1e-12), 1 - 1e-12)
    hours = settings.median_delay_hours * math.exp(settings.delay_spread * NormalDist().inv_cdf(u))
    return dt.timedelta(hours=min(hours, settings.max_delay_hours))


@dataclass(frozen=True)
class Invitation:
    """One member's mails about one survey: when the invitation and each reminder were sent."""

    user_id: str
    survey_id: str
    invited_at: dt.datetime
    reminded_at: tuple[dt.datetime, ...] = ()
    profile: Mapping[str, Any] = field(default_factory=dict)


def completes_at(
    settings: RespondentSettings, invitation: Invitation, clock: FieldworkClock, now: dt.datetime
) -> dt.datetime | None:
    """When (wall time, on `clock`; after `now` if still to come) the member completes, or None if
    they do not (given the mails so far).

    One draw u decides: they respond to the invitation if u < p, to the k-th reminder if
    u < p (1 + lift)^k; a member who would answer several mails answers the earliest one due."""
    p = completion_rate(settings, invitation.profile, invitation.invited_at.year)
    u = unit_draw(settings.seed, invitation.user_id, invitation.survey_id, "complete")
    mails = [invitation.invited_at, *sorted(invitation.reminded_at)]
    due = [
        clock.wall_after(
            sent, simulated_delay(settings, invitation.user_id, invitation.survey_id, f"mail{k}") / HOUR, now
        )
        for k, sent in enumerate(mails)
        if u < p * (1 + settings.reminder_lift) ** k
    ]
    return min(due, default=None)


# --- SurveyGizmo, over its HTTP API ----------------------------------------------------------------


class SurveyGizmoRespondent:
    """What a respondent's completion leaves in SurveyGizmo: the survey (made locally if the sample
    names one it lacks) and one Complete response per member, found again by `panel_id`."""

    def __init__(self, base_url: str, api_token: str, api_token_secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {"api_token": api_token, "api_token_secret": api_token_secret}
        self._session = requests.Session()
        self._surveys: dict[str, dict[str, Any]] = {}  # one definition per survey a sample names

    def close(self) -> None:
        self._session.close()

    def forget_surveys(self) -> None:
        """Read every survey afresh (after a failed pass: the in-memory server may have restarted empty)."""
        self._surveys.clear()

    def survey(self, survey_id: str, title: str) -> dict[str, Any]:
        if survey_id not in self._surveys:
            found = self._call("GET", f"/v5/survey/{survey_id}", {}, allow_404=True)
            if found is None:
                found = self._call("PUT", "/v5/survey", {"title": title, "id": survey_id})
                LOG.info(f"survey {survey_id} made in the local SurveyGizmo server (as the backend made it there)")
            assert found is not None  # only the GET may be a 404
            self._surveys[survey_id] = found
        return self._surveys[survey_id]

    def response_of(self, survey_id: str, title: str, user_id: str, seed: int) -> str:
        """The id of the member's response, created now unless SurveyGizmo has one already."""
        questions = _questions(self.survey(survey_id, title))
        panel_question = next((q for q in questions if q.get("shortname") == PANEL_ID_SHORTNAME), None)
        if panel_question is None:
            raise ValueError(f"survey {survey_id} has no hidden {PANEL_ID_SHORTNAME} question to name the member")
        existing = self._call(
            "GET",
            f"/v5/survey/{survey_id}/surveyresponse",
            {
                "filter[field][0]": f"[question({panel_question['id']})]",
                "filter[operator][0]": "=",
                "filter[value][0]": user_id,
            },
            envelope=True,
        )
        if existing and existing.get("data"):
            return str(existing["data"][0]["id"])
        answers = {f"data[{PANEL_ID_SHORTNAME}][value]": user_id}
        for question in questions:
            options = question.get("options") or []
            if question.get("type") in CHOICE_TYPES and options:
                chosen = options[int(unit_draw(seed, user_id, survey_id, f"answer:{question['id']}") * len(options))]
                answers[f"data[{question['id']}][value]"] = str(chosen["value"])
        created = self._call("PUT", f"/v5/survey/{survey_id}/surveyresponse", {"status": "Complete", **answers})
        assert created is not None
        return str(created["id"])

    def _call(
        self, method: str, path: str, params: Mapping[str, str], *, allow_404: bool = False, envelope: bool = False
    ) -> Any:
        answer = self._session.request(
            method, self.base_url + path, params={**self._auth, **params}, timeout=HTTP_TIMEOUT_SECONDS
        )
        if allow_404 and answer.status_code == 404:
            return None
        body = answer.json() if answer.headers.get("Content-Type", "").startswith("application/json") else {}
        if answer.status_code != 200 or not body.get("result_ok"):
            # The URL holds the credentials: name the path only.
            raise RuntimeError(f"SurveyGizmo {method} {path}: HTTP {answer.status_code} {body.get('message', '')}")
        return body if envelope else body["data"]


def _questions(survey: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [question for page in survey.get("pages") or [] for question in page.get("questions") or []]


# --- the simulator ---------------------------------------------------------------------------------


@dataclass
class PassSummary:
    """What one pass saw: invitations read, members who have completed by now, completions made."""

    invitations: int = 0
    completed: int = 0
    new_completes: int = 0


@dataclass(frozen=True)
class InvitedSample:
    sample_id: ObjectId
    name: str
    survey_id: Any  # as the sample stores it (the transaction carries the same value)
    points: int
    invitations: tuple[ObjectId, ...]
    reminders: tuple[ObjectId, ...]


class RespondentSimulator:
    """Passes over the invited samples; each pass completes every member whose completion is due."""

    def __init__(
        self,
        db: Database,
        surveygizmo: SurveyGizmoRespondent,
        settings: RespondentSettings,
        timing: FieldworkTiming,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.surveygizmo = surveygizmo
        self.settings = settings
        self.timing = timing
        self.clock = clock
        self.totals = PassSummary()
        self.passes = 0
        self.last_error: str | None = None
        self._skipped: set[ObjectId] = set()  # samples already logged as not simulable
        self.db[TRANSACTIONS].create_index(RESPONSE_ORDER)

    def run_pass(self) -> PassSummary:
        now = self.clock.now()
        fieldwork_clock = self.timing.fieldwork_clock(self.db)
        summary = PassSummary()
        for sample in self._invited_samples(now):
            made = self._complete_sample(sample, now, fieldwork_clock, summary)
            if made:
                done = self.db[TRANSACTIONS].count_documents({"survey_id": sample.survey_id})
                LOG.info(
                    f"sample {sample.sample_id} (survey {sample.survey_id}): {made} new complete(s), {done} so far"
                )
        self.passes += 1
        self.totals.invitations = summary.invitations
        self.totals.completed = summary.completed
        self.totals.new_completes += summary.new_completes
        return summary

    def run_forever(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Pass after pass until `stop` is set; a pass that fails (Mongo or SurveyGizmo down) is logged
        and the next one tries again."""
        while not stop.is_set():
            try:
                self.run_pass()
                self.last_error = None
            except Exception as exc:  # the service outlives a server restart
                self.last_error = describe_error(exc)
                LOG.warning(f"respondent pass failed, trying again: {self.last_error}")
                self.surveygizmo.forget_surveys()
            stop.wait(poll_seconds)

    def status(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "invitations": self.totals.invitations,
            "completed": self.totals.completed,
            "new_completes": self.totals.new_completes,
            "time_scale": self.timing.time_scale,
            "fieldwork_clock": self.timing.clock,
            "seed": self.settings.seed,
            "last_error": self.last_error,
        }

    def _invited_samples(self, now: dt.datetime) -> Iterator[InvitedSample]:
        mailings = self.db[MAILINGS].find(
            {
                "$or": [{"invitation_for_sample": {"$ne": None}}, {"reminder_for_sample": {"$ne": None}}],
                "created_at": {"$gte": now - self.settings.lookback},
            },
            {"invitation_for_sample": 1, "reminder_for_sample": 1, "default_data.points": 1},
        )
        by_sample: dict[ObjectId, list[Mapping[str, Any]]] = {}
        for mailing in mailings:
            by_sample.setdefault(mailing.get("invitation_for_sample") or mailing["reminder_for_sample"], []).append(
                mailing
            )
        for sample_id, its_mailings in by_sample.items():
            sample = self.db[SAMPLES].find_one({"_id": sample_id}, {"survey_id": 1, "name": 1})
            survey_id = (sample or {}).get("survey_id")
            if sample is None or not SURVEYGIZMO_ID.match(str(survey_id)):
                if sample_id not in self._skipped:
                    self._skipped.add(sample_id)
                    LOG.warning(f"sample {sample_id}: no survey_id that is a SurveyGizmo id; nobody completes it")
                continue
            invitations = [m for m in its_mailings if m.get("invitation_for_sample") is not None]
            points = next((m["default_data"]["points"] for m in invitations if _points(m) is not None), 0)
            yield InvitedSample(
                sample_id=sample_id,
                name=str(sample.get("name") or f"Sample {sample_id}"),
                survey_id=survey_id,
                points=points,
                invitations=tuple(m["_id"] for m in invitations),
                reminders=tuple(m["_id"] for m in its_mailings if m.get("reminder_for_sample") is not None),
            )

    def _complete_sample(
        self, sample: InvitedSample, now: dt.datetime, fieldwork_clock: FieldworkClock, summary: PassSummary
    ) -> int:
        made = 0
        quotas: QuotaRoom | None = None  # read once a pass, counted down as members complete
        for page in self._invitation_pages(sample):
            summary.invitations += len(page)
            due = [
                invitation
                for invitation in page
                if (at := completes_at(self.settings, invitation, fieldwork_clock, now)) and at <= now
            ]
            if not due:
                continue
            done = {
                str(t["user_id"])
                for t in self.db[TRANSACTIONS].find(
                    {"survey_id": sample.survey_id, "user_id": {"$in": [ObjectId(i.user_id) for i in due]}},
                    {"user_id": 1},
                )
            }
            summary.completed += len(due)
            if quotas is None:
                quotas = self._quota_room(sample, now.year)
            for invitation in due:
                if invitation.user_id in done or not quotas.admits(invitation.profile, now.year):
                    continue
                completed = self._complete(sample, invitation.user_id)
                if completed:
                    quotas.completed(invitation.profile, now.year)
                made += completed
        summary.new_completes += made
        return made

    def _quota_room(self, sample: InvitedSample, year: int) -> QuotaRoom:
        """The sample's quotas now: each cell's cap (the last fieldwork pass's `by_cell`) less the
        survey's completes so far."""
        document = self.db[SAMPLES].find_one({"_id": sample.sample_id}, {"fieldwork_state": 1}) or {}
        state = document.get("fieldwork_state") or {}
        room: dict[Cell, float] = {
            (str(cell["target"]), str(cell["category"])): float(cell.get("cap", cell["target_completes"]))
            for cell in state.get("by_cell") or []
        }
        quotas = QuotaRoom(list(state.get("closed_cells") or []), room)
        if room:
            completers = self.db[TRANSACTIONS].distinct("user_id", {"survey_id": sample.survey_id})
            for user in self.db[USERS].find({"_id": {"$in": completers}}, {"profile": 1}):
                quotas.completed(user.get("profile") or {}, year)
        return quotas

    def _complete(self, sample: InvitedSample, user_id: str) -> int:
        survey_id = str(sample.survey_id)
        response_id = self.surveygizmo.response_of(survey_id, sample.name, user_id, self.settings.seed)
        result = self.db[TRANSACTIONS].update_one(
            {"user_id": ObjectId(user_id), "survey_id": sample.survey_id},
            {
                "$setOnInsert": {
                    "response_id": response_id,
                    "points": sample.points,
                    "created_at": self.clock.now(),
                    "processed": False,
                }
            },
            upsert=True,
        )
        return int(result.upserted_id is not None)

    def _invitation_pages(self, sample: InvitedSample) -> Iterator[list[Invitation]]:
        """The sample's invited members, `PAGE_SIZE` at a time, each with their reminders and profile.
        A member invited twice (a second invitation of a dynamic sample) counts from the first."""
        rows = self.db[MAIL_LOG].find(
            {"mailing_id": {"$in": list(sample.invitations)}, "status": SENT, "user_id": {"$ne": None}},
            {"user_id": 1, "sent_at": 1},
            batch_size=PAGE_SIZE,
        )
        page: list[Mapping[str, Any]] = []
        for row in rows:
            page.append(row)
            if len(page) == PAGE_SIZE:
                yield self._with_details(sample, page)
                page = []
        if page:
            yield self._with_details(sample, page)

    def _with_details(self, sample: InvitedSample, rows: Sequence[Mapping[str, Any]]) -> list[Invitation]:
        invited: dict[str, dt.datetime] = {}
        for row in rows:
            sent = as_utc(row.get("sent_at") or row["_id"].generation_time)
            key = str(row["user_id"])
            invited[key] = min(sent, invited.get(key, sent))
        ids = [ObjectId(user_id) for user_id in invited]
        reminded: dict[str, list[dt.datetime]] = {}
        if sample.reminders:
            for row in self.db[MAIL_LOG].find(
                {"mailing_id": {"$in": list(sample.reminders)}, "status": SENT, "user_id": {"$in": ids}},
                {"user_id": 1, "sent_at": 1},
            ):
                reminded.setdefault(str(row["user_id"]), []).append(
                    as_utc(row.get("sent_at") or row["_id"].generation_time)
                )
        profiles = {
            str(user["_id"]): user.get("profile") or {}
            for user in self.db[USERS].find({"_id": {"$in": ids}}, {"profile": 1})
        }
        return [
            Invitation(
                user_id=user_id,
                survey_id=str(sample.survey_id),
                invited_at=sent,
                reminded_at=tuple(sorted(reminded.get(user_id, []))),
                profile=profiles.get(user_id, {}),
            )
            for user_id, sent in invited.items()
        ]


def _points(mailing: Mapping[str, Any]) -> int | None:
    points = (mailing.get("default_data") or {}).get("points")
    return points if isinstance(points, int) and not isinstance(points, bool) else None


# --- the service: a status page on a port (the local stack waits for it) ---------------------------


def serve_status(simulator: RespondentSimulator, host: str, port: int) -> ThreadingHTTPServer:
    """`GET /` answers the simulator's counters as JSON; the server runs in a daemon thread."""

    class StatusHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = json.dumps(simulator.status()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            LOG.debug("status page: %s", self.path)

    server = ThreadingHTTPServer((host, port), StatusHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="respondents-status", daemon=True).start()
    return server


def load_rates(path: str) -> dict[str, float]:
    """A rates file: `{"18-24|male": 0.04, ..., "default": 0.15}`; cells it omits keep their default."""
    with open(path, encoding="utf-8") as file:
        raw = json.load(file)
    if not isinstance(raw, dict) or not all(isinstance(v, int | float) for v in raw.values()):
        raise ValueError(f"{path}: must be an object of cell -> probability")
    return {str(cell): float(rate) for cell, rate in raw.items()}
