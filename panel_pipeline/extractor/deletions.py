"""Which stored responses SurveyGizmo no longer has, and when a listing is not to be trusted.

v5 lists leave deleted responses out and say nothing else about them (research note §11), so the
only way to notice a deletion is to list every id a survey still has and compare. A listing that
came back short would make every missing response look deleted, hence the guard in `refusal`:

* the listing must have settled (a pass's pages and the count agreed) and returned at least the
  count SurveyGizmo reported for the same filter; otherwise pages were lost or shifted;
* a sweep may not mark more than `max_share` of a survey's live responses deleted in one go (and
  always may up to `ALWAYS_ALLOWED`). Real deletions in a panel's profile survey are erasure
  requests and test clean-ups: a few a week, well under 1%. A consistent listing that is still
  wrong (a survey emptied or replaced by mistake, the key of another account, a filter read in
  the wrong zone cutting days off) shows up as a large share, and is refused rather than applied.
  A purge on purpose is applied by re-running the sweep with a higher `max_deleted_share`.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from panel_pipeline.extractor.surveygizmo import ResponseIdListing

ALWAYS_ALLOWED = 20


@dataclass(frozen=True)
class StoredResponse:
    response_id: str
    day: str
    deleted: bool


@dataclass(frozen=True)
class DeletionPlan:
    """What the sweep changes for one survey, by response id."""

    checked: int
    newly_deleted: frozenset[str]
    restored: frozenset[str]
    not_stored: int
    days: frozenset[str]


def plan_deletions(stored: Iterable[StoredResponse], listed: frozenset[str]) -> DeletionPlan:
    """Stored responses missing from the listing become deleted; deleted ones listed again come back."""
    stored = list(stored)
    newly_deleted = {s.response_id for s in stored if not s.deleted and s.response_id not in listed}
    restored = {s.response_id for s in stored if s.deleted and s.response_id in listed}
    changed = newly_deleted | restored
    return DeletionPlan(
        checked=len(stored),
        newly_deleted=frozenset(newly_deleted),
        restored=frozenset(restored),
        not_stored=len(listed - {s.response_id for s in stored}),
        days=frozenset(s.day for s in stored if s.response_id in changed),
    )


def refusal(plan: DeletionPlan, listing: ResponseIdListing, live: int, max_share: float) -> str | None:
    """Why this plan must not be applied, or None when it may."""
    if not listing.settled or listing.reported_total is None or len(listing.ids) < listing.reported_total:
        return (
            f"the listing did not add up ({len(listing.ids)} ids, count reported {listing.reported_total}, "
            f"{'settled' if listing.settled else 'still moving'}); nothing marked"
        )
    allowed = max(ALWAYS_ALLOWED, int(max_share * live))
    if len(plan.newly_deleted) > allowed:
        return (
            f"{len(plan.newly_deleted)} of {live} live responses would be marked deleted, more than the "
            f"{allowed} allowed ({max_share:.0%}); re-run with a higher max_deleted_share if that purge was meant"
        )
    return None
