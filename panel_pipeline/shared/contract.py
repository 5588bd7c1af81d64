"""The Mongo contract's vocabulary: the collections the backend and the pipeline share, the queue's
fields and statuses, member statuses, and the profile attributes with their values.

docs/contract.md describes each of these; panel_pipeline_tests/shared/test_contract.py checks the
page against this module, so a value added here and not documented (or documented and not here)
fails a test. Plain constants: no Dagster, no Mongo.
"""

from __future__ import annotations

# Collections the backend writes and the pipeline reads (and writes back to).
USERS = "users"
SAMPLES = "samples"
SAMPLE_MEMBERS = "sample_members"
MAILINGS = "mailings"
MAIL_LOG = "mail_log"
TRANSACTIONS = "transactions"
SHARED_COLLECTIONS: tuple[str, ...] = (USERS, SAMPLES, SAMPLE_MEMBERS, MAILINGS, MAIL_LOG, TRANSACTIONS)
# Collections only the pipeline uses.
PIPELINE_STATE = "pipeline_state"
PENDING_INVITATIONS = "pending_invitations"
MAIL_EVENTS = "mail_events"
RAW_RESPONSES = "sg_responses"
QUARANTINED_RESPONSES = "sg_quarantine"
SURVEYS = "sg_surveys"
RESPONSE_RATES = "response_rates"
DYNAMIC_HELD_BACK = "dynamic_held_back"
PIPELINE_COLLECTIONS: tuple[str, ...] = (
    PIPELINE_STATE,
    PENDING_INVITATIONS,
    MAIL_EVENTS,
    RAW_RESPONSES,
    QUARANTINED_RESPONSES,
    SURVEYS,
    RESPONSE_RATES,
    DYNAMIC_HELD_BACK,
)

# The queue: the backend inserts `processed: false`; the pipeline moves `status` and finishes with
# `processed: true` and DONE, FAILED or CANCELLED (queue/store.py has the state table). PAUSED
# waits, claimable by nobody, until it is resumed.
QUEUED_COLLECTIONS: tuple[str, ...] = (SAMPLES, MAILINGS, TRANSACTIONS)
PROCESSING = "processing"
RETRY = "retry"
POSTPONED = "postponed"
PAUSED = "paused"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
QUEUE_STATUSES: tuple[str, ...] = (PROCESSING, RETRY, POSTPONED, PAUSED, DONE, FAILED, CANCELLED)

# `users.status`: only ACTIVE members are sampled or mailed in bulk.
ACTIVE = "active"
UNSUBSCRIBED = "unsubscribed"
BOUNCED = "bounced"
DELETED = "deleted"
MEMBER_STATUSES: tuple[str, ...] = (ACTIVE, UNSUBSCRIBED, BOUNCED, DELETED)

# `mailings.kind`.
BULK = "bulk"
TRANSACTIONAL = "transactional"
MAIL_KINDS: tuple[str, ...] = (BULK, TRANSACTIONAL)
# `mailings.delivery` (pipeline-written): PROMPT mail (a dynamic sample's newcomers) goes out at once,
# through the standing mail worker like transactional mail, not in the bulk mailings' one-at-a-time line.
PROMPT = "prompt"

# Template data (`mailings.default_data`, a recipient's `data`, `samples.mailing.default_data`): the
# Mailer fills these per member, and puts the HTML-escaped copy of the data under HTML_COPY_KEY.
FIRST_NAME = "first_name"
UNSUBSCRIBE_URL = "unsubscribe_url"
HTML_COPY_KEY = "html"
PER_MEMBER_VARIABLES: frozenset[str] = frozenset({FIRST_NAME, UNSUBSCRIBE_URL})
# The template of a sample's fieldwork reminder (an invitation's data plus `closes_on`).
SURVEY_REMINDER_TEMPLATE = "survey_reminder"
# `samples.fieldwork_state.status`: fieldwork runs, or is over (never reopened).
FIELDWORK_OPEN = "open"
FIELDWORK_CLOSED = "closed"

# `users.profile`: each categorical attribute and its values, exactly as stored.
PROFILE_CATEGORIES: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male", "other", "prefer_not_to_say"),
    "age_band": ("18-24", "25-34", "35-44", "45-54", "55-64", "65-74", "75+"),
    "region": (
        "North East",
        "North West",
        "Yorkshire and The Humber",
        "East Midlands",
        "West Midlands",
        "East of England",
        "London",
        "South East",
        "South West",
        "Wales",
        "Scotland",
        "Northern Ireland",
    ),
    "social_grade": ("AB", "C1", "C2", "DE"),
    "education": (
        "no_qualifications",
        "level_1",
        "level_2",
        "apprenticeship",
        "level_3",
        "level_4_plus",
        "other",
    ),
    "vote_2019": (
        "conservative",
        "labour",
        "lib_dem",
        "brexit_party",
        "green",
        "snp",
        "plaid_cymru",
        "other",
        "did_not_vote",
    ),
    "vote_2024": (
        "conservative",
        "labour",
        "lib_dem",
        "reform_uk",
        "green",
        "snp",
        "plaid_cymru",
        "other",
        "did_not_vote",
    ),
    "eu_ref_vote": ("remain", "leave", "did_not_vote"),
}
# Lower bound of each age band, in the order of PROFILE_CATEGORIES["age_band"].
AGE_BAND_LOWER_BOUNDS: tuple[int, ...] = (18, 25, 35, 45, 55, 65, 75)
