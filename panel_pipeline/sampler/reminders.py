"""Fieldwork reminders: who a fieldwork pass reminds, within the contact budget, as one reminder
mailing per round (made by shared/invitations.py, sent by the Mailer). No Dagster.

Invariants:

- Reminders go out only while fieldwork is still open after the pass's state was written, and only
  for a sample with an invitation (`mailing`): the reminder carries the invitation's data.
- The members reminded are `fieldwork.reminder_candidates` (invited, not completed, active, due,
  under `max_reminders`, every cell open and one short: in a sample fielded in waves, short of what
  its fresh sample could still give, as the last top-up look found) less those whose earlier reminder is still
  open (pending or not yet sent), so nobody is in two rounds at once, and less those put in a round
  within `reminder_after_hours` (the round's id carries its time): a reminder that reached nobody
  (an address the Mailer refused, a mailing that failed) is tried again only after that long.
- The contact budget: a candidate whose survey contacts in the last 7 days (any sample:
  shared/contacts.py) already reach `contacts_per_week` is held back, counted in all and per cell in
  `fieldwork_state.reminder_round`. Held back is this pass's count, not a running total.
- A round a crashed pass left pending is made first, then this pass's round is stamped and made;
  each step is idempotent, so a crash anywhere reminds nobody twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from bson import ObjectId
from pymongo.database import Database

from panel_pipeline.sampler import fieldwork, store, waves
from panel_pipeline.sampler.fieldwork_state import FIELDWORK_OPEN, FieldworkUpdate
from panel_pipeline.sampler.requests import FieldworkSettings, SampleRequest
from panel_pipeline.shared import invitations
from panel_pipeline.shared.contacts import recent_contacts


@dataclass(frozen=True)
class ReminderRound:
    """One pass's reminders: the members chosen now (a mask over the members) and who the contact
    budget held back."""

    chosen: np.ndarray
    budget: fieldwork.BudgetCheck

    @property
    def reminded(self) -> int:
        return int(self.chosen.sum())

    def to_document(self, at: dt.datetime) -> dict[str, Any]:
        """`fieldwork_state.reminder_round`: `{at, reminded, held_back, by_cell: [{target, category, held_back}]}`."""
        return {"at": at, "reminded": self.reminded, **self.budget.to_document()}


def within_budget(
    due: np.ndarray, contacts: np.ndarray, accounting: fieldwork.CellAccounting, members: pd.DataFrame, budget: int
) -> ReminderRound:
    """The due members whose contacts in the last 7 days leave room for one more; the rest held back."""
    check = fieldwork.contact_budget(contacts, accounting.cells, members, budget, considered=due)
    return ReminderRound(chosen=due & check.allowed, budget=check)


def not_remindable_yet(
    members: pd.DataFrame, open_ids: Set[ObjectId], now: dt.datetime, settings: FieldworkSettings
) -> np.ndarray:
    """Mask of the members in one of the sample's open rounds, or put in a round less than
    `reminder_after_hours` ago (`members.reminder_mailing_id`: their latest round)."""
    rounds = members["reminder_mailing_id"]
    in_open_round = rounds.isin(list(open_ids)).to_numpy(dtype=bool)
    made_at = [r.generation_time if isinstance(r, ObjectId) else None for r in rounds]
    with np.errstate(invalid="ignore"):
        tried_lately = settings.hours_since(made_at, now) < settings.reminder_after_hours
    return in_open_round | tried_lately


def remind(
    db: Database,
    sample_id: ObjectId,
    request: SampleRequest,
    members: pd.DataFrame,
    update: FieldworkUpdate,
    now: dt.datetime,
    contacts_per_week: int,
    log: invitations.Logger,
) -> ReminderRound | None:
    """The pass's reminder round (`members`: store.fieldwork_members, `update`: its fieldwork now),
    stamped, made and recorded on the sample; None when the sample reminds nobody (closed, no mailing)."""
    if request.fieldwork is None or request.mailing is None or update.state["status"] != FIELDWORK_OPEN:
        return None
    invitations.create_missing_mailings(db, now, sample_id=sample_id, log=log)  # a crashed pass's round first
    cell_members = update.cell_members
    not_yet = not_remindable_yet(members, invitations.open_reminder_ids(db, sample_id), now, request.fieldwork)
    fresh_sample = waves.invitable_completes(request, update.state, update.accounting.cells)
    due = fieldwork.reminder_candidates(
        cell_members, update.accounting, now, request.fieldwork, invitable_completes=fresh_sample
    )
    due &= ~not_yet
    contacts = np.zeros(len(cell_members), dtype=np.int64)
    contacts[due] = recent_contacts(db, object_ids(cell_members.index[due]), now)
    reminder_round = within_budget(due, contacts, update.accounting, cell_members, contacts_per_week)
    invitations.stamp_pending_reminder(db, sample_id, object_ids(cell_members.index[reminder_round.chosen]), now)
    invitations.create_missing_mailings(db, now, sample_id=sample_id, log=log)
    store.save_reminder_round(db, sample_id, reminder_round.to_document(now))
    return reminder_round


def object_ids(user_ids: pd.Index) -> list[ObjectId]:
    return [ObjectId(user_id) for user_id in user_ids]
