"""Fieldwork benchmark: 1,000 UK nat rep completes from a 200,000-member simulated panel (no Mongo).

The panel (`generate_profiles`, skewed like an opt-in panel) has true response rates that differ by
cell: from 4% (men 18-24) to 35% (women 65-74) by age x gender, times a region factor (0.85-1.15)
and a grade factor (AB 1.10 ... DE 0.85). A history of past surveys is generated from the same
rates and the same delay curve, and `response_rates.learn_response_rates` learns the rates from it.
Respondents start the survey after a lognormal delay (median 8 h; 80% within 24 h), take 15 minutes,
and a reminder turns a would-be non-respondent into a respondent with probability 0.2 x their rate.
Each member's luck (whether they would respond, after how long) is drawn once, so every method
meets the same population.

Methods, each on the same population and targets (the uk_nat_rep preset, `targets.py`):
  (a) one wave sized by the overall response rate (`quotas.select_members`), every complete kept;
  (b) one wave sized by the learned per-cell rates (the same, with `LearnedResponseRates.as_request_rates`);
  (c) fieldwork.py: a first wave for 70% of each cell, top-ups every 12 h for cells short of target,
      one reminder after 48 h in short cells whose fresh sample ran out (what the members still
      invitable could give, as the last top-up found, is under the need), age x gender cells closed
      as they fill and the marginal ones at target + the request's default tolerance, 1 pp (a
      respondent entering a closed cell is screened out; in-progress respondents count), the
      3-in-7-days contact budget.
Oracle: the same quota plan for 1,000 completes made with the true rates, and the invitations it
needs in expectation: sum over cells of planned completes / true rate (no rounding, no bad luck).
Printed per method: largest deviation from target over every category of every target (pp),
completes, invitations, invitations per complete as a ratio to the oracle's, and for (a) and (c)
the design effect of weights raked to the targets within [0.2, 5]. Targets for (c): every cell
within 1 pp, invitations <= 1.15 x the oracle's. Three seeds in one run; the spread is printed.

Run: python -m benchmarks fieldwork_bench
"""

from __future__ import annotations

import datetime as dt
import heapq
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from panel_pipeline.local.synthetic_panel import generate_profiles
from panel_pipeline.sampler import fieldwork
from panel_pipeline.sampler.quotas import select_members
from panel_pipeline.sampler.requests import FieldworkSettings, ResponseRates
from panel_pipeline.sampler.response_rates import RATE_FIELDS, LearnedResponseRates, learn_response_rates
from panel_pipeline.sampler.targets import Target, preset_targets
from panel_pipeline.sampler.weighting import weight_completes
from panel_pipeline.shared.contacts import CONTACT_WINDOW
from panel_pipeline.shared.contract import PROFILE_CATEGORIES

MEMBERS = 200_000
SIZE = 1_000
SEEDS = (1, 2, 3)
YEAR = 2025
START = dt.datetime(2025, 6, 2, tzinfo=dt.UTC)
HISTORY_SURVEYS = 40
HISTORY_INVITATIONS = 6_000
HISTORY_DAYS = 120
DELAY_MEDIAN_HOURS = 8.0
DELAY_SIGMA = 1.3
SURVEY_HOURS = 0.25
REMINDER_LIFT = 0.2
STEP_HOURS = 2.0
TOP_UP_EVERY_HOURS = 12.0
TOLERANCE_PP = 1.0  # the request's default: the soft cells' room above target
FIELDWORK_HOURS = 14 * 24
MAX_DEVIATION_PP = 1.0
MAX_ORACLE_RATIO = 1.15

# True rates: age band (rows, the contract's order) x [female, male].
AGE_GENDER_RATES = np.array(
    [[0.07, 0.04], [0.10, 0.06], [0.14, 0.09], [0.19, 0.12], [0.25, 0.16], [0.35, 0.22], [0.30, 0.19]]
)
OTHER_GENDER_RATE = 0.10
REGION_FACTORS = np.array([1.10, 1.00, 1.05, 1.00, 0.95, 1.05, 0.85, 1.00, 1.15, 1.05, 0.90, 0.90])
GRADE_FACTORS = np.array([1.10, 1.05, 0.95, 0.85])


def true_rates(profiles: pd.DataFrame) -> np.ndarray:
    age = profiles["age_band"].cat.codes.to_numpy()
    gender = profiles["gender"].cat.codes.to_numpy()  # female, male, other, prefer_not_to_say
    base = np.where(gender < 2, AGE_GENDER_RATES[age, np.minimum(gender, 1)], OTHER_GENDER_RATE)
    region = REGION_FACTORS[profiles["region"].cat.codes.to_numpy()]
    grade = GRADE_FACTORS[profiles["social_grade"].cat.codes.to_numpy()]
    return base * region * grade


def true_rate_table() -> ResponseRates:
    """The true rates as a request's rate table over RATE_FIELDS (what the oracle sizes with)."""
    import itertools

    cells = list(itertools.product(*(PROFILE_CATEGORIES[field] for field in RATE_FIELDS)))
    frame = pd.DataFrame(cells, columns=list(RATE_FIELDS))
    for field in RATE_FIELDS:
        frame[field] = pd.Categorical(frame[field], categories=PROFILE_CATEGORIES[field])
    rates = true_rates(frame)
    return ResponseRates(default=float(rates.min()), fields=RATE_FIELDS, rates=dict(zip(cells, rates, strict=True)))


@dataclass(frozen=True)
class Population:
    profiles: pd.DataFrame
    categories: pd.DataFrame  # per target key, each member's category
    rates: np.ndarray  # true
    luck: np.ndarray  # uniform: responds when luck < rate
    delay: np.ndarray  # hours from invitation to starting the survey
    reminder_luck: np.ndarray
    reminder_delay: np.ndarray
    contacts_last_7_days: np.ndarray
    placeable: np.ndarray


def delays(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(np.log(DELAY_MEDIAN_HOURS), DELAY_SIGMA, n)


def make_population(seed: int, targets: tuple[Target, ...]) -> tuple[Population, LearnedResponseRates]:
    rng = np.random.default_rng(seed)
    profiles = generate_profiles(MEMBERS, seed=seed, as_of_year=YEAR)
    rates = true_rates(profiles)
    history, contacts = past_surveys(rng, profiles, rates)
    learned = learn_response_rates(history, START)
    population = Population(
        profiles=profiles,
        categories=fieldwork.member_categories(profiles, targets),
        rates=rates,
        luck=rng.random(MEMBERS),
        delay=delays(rng, MEMBERS),
        reminder_luck=rng.random(MEMBERS),
        reminder_delay=delays(rng, MEMBERS),
        contacts_last_7_days=contacts,
        placeable=fieldwork.placeable(profiles, targets),
    )
    return population, learned


def past_surveys(
    rng: np.random.Generator, profiles: pd.DataFrame, rates: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """HISTORY_SURVEYS random invitations over HISTORY_DAYS before START, answered at the true rates."""
    rows, sent = [], []
    for survey in range(HISTORY_SURVEYS):
        invited = rng.choice(MEMBERS, HISTORY_INVITATIONS, replace=False)
        sent_hours_ago = HISTORY_DAYS * 24 * (1 - survey / HISTORY_SURVEYS)
        responded = rng.random(len(invited)) < rates[invited]
        delay = delays(rng, len(invited))
        completed_hours = np.where(responded & (delay < sent_hours_ago), delay, np.nan)
        rows.append(
            pd.DataFrame(
                {
                    "member": invited,
                    "invited_at": START - dt.timedelta(hours=sent_hours_ago),
                    "completed_at": pd.Timestamp(START - dt.timedelta(hours=sent_hours_ago))
                    + pd.to_timedelta(completed_hours, unit="h"),
                }
            )
        )
        if sent_hours_ago <= CONTACT_WINDOW / dt.timedelta(hours=1):
            sent.append(invited)
    history = pd.concat(rows, ignore_index=True)
    for field in ("age_band", "gender", "region", "social_grade"):
        history[field] = profiles[field].to_numpy()[history["member"].to_numpy()]
    contacts = np.bincount(np.concatenate(sent), minlength=MEMBERS) if sent else np.zeros(MEMBERS, dtype=np.int64)
    return history, contacts


@dataclass(frozen=True)
class Outcome:
    completes: int
    invitations: int
    max_deviation_pp: float
    design_effect: float | None
    weights_status: str | None
    hours: float | None
    reminders: int = 0
    closed_because: str = ""
    held_back: int = 0
    soft_cells_reopened_hour: float | None = None


def deviation_pp(categories: pd.DataFrame, targets: tuple[Target, ...]) -> float:
    """Largest |achieved share - target share| over every category of every target (pp)."""
    worst = 0.0
    for target in targets:
        counts = categories[target.key].value_counts()
        answered = counts.sum()
        for cell, share in target.shares.items():
            achieved = counts.get("|".join(cell), 0) / answered if answered else 0.0
            worst = max(worst, abs(100 * (achieved - share)))
    return worst


def design_effect_of(categories: pd.DataFrame, targets: tuple[Target, ...]) -> tuple[float, str]:
    shares = {target.key: {"|".join(cell): share for cell, share in target.shares.items()} for target in targets}
    result = weight_completes({key: categories[key].to_numpy() for key in shares}, shares, (0.2, 5.0))
    return result.design_effect, result.status


def one_wave(
    population: Population, targets: tuple[Target, ...], rates: np.ndarray, eligible: np.ndarray, seed: int
) -> Outcome:
    """Invite once (every cell's whole target at `rates`), keep every complete within the fieldwork period."""
    settings = FieldworkSettings(waves=False)
    cells = fieldwork.cell_targets(targets, SIZE)
    wave = fieldwork.first_wave(cells, population.categories, rates, settings, np.random.default_rng(seed), eligible)
    return outcome_of(population, targets, wave.positions)


def todays_draw(
    population: Population, targets: tuple[Target, ...], rates: ResponseRates, eligible: np.ndarray
) -> Outcome:
    """The Sampler's draw as it is (quotas.select_members, invitations from its per-cell plan)."""
    selection = select_members(population.profiles, targets, SIZE, eligible=eligible, seed=0, response_rates=rates)
    return outcome_of(population, targets, selection.row_positions)


def outcome_of(population: Population, targets: tuple[Target, ...], invited: np.ndarray) -> Outcome:
    completed = invited[
        (population.luck[invited] < population.rates[invited]) & (population.delay[invited] < FIELDWORK_HOURS)
    ]
    categories = population.categories.iloc[completed]
    deff, status = design_effect_of(categories, targets)
    return Outcome(len(completed), len(invited), deviation_pp(categories, targets), deff, status, None)


def oracle_invitations(population: Population, targets: tuple[Target, ...], eligible: np.ndarray) -> float:
    """Expected invitations of the quota plan for SIZE completes (quotas' cells: the cross of every
    target; the plan made at rate 1 so no cell's capacity binds) sized with each cell's true rate."""
    selection = select_members(population.profiles, targets, SIZE, eligible=eligible, seed=0)
    cells = selection.cells
    true = true_rate_table()
    rate = [true.rate_for(tuple(values)) for values in cells[list(RATE_FIELDS)].itertuples(index=False)]
    return float((cells["completes"] / np.asarray(rate)).sum())


class FieldworkRun:
    """Simulated time for method (c): starts and completes as events, decisions every STEP_HOURS."""

    def __init__(
        self, population: Population, targets: tuple[Target, ...], learned: LearnedResponseRates, seed: int
    ) -> None:
        self.population = population
        self.targets = targets
        self.learned = learned
        self.rng = np.random.default_rng(seed + 1000)
        self.settings = FieldworkSettings()
        self.predicted = learned.predict(population.profiles)
        self.cells = fieldwork.cell_targets(targets, SIZE, tolerance_pp=TOLERANCE_PP)
        self.codes = fieldwork.category_codes(self.cells, population.categories)
        self.invited_at = np.full(MEMBERS, np.nan)
        self.reminded_at = np.full(MEMBERS, np.nan)
        self.completed_at = np.full(MEMBERS, np.nan)
        self.started = np.zeros(MEMBERS, dtype=bool)
        self.screened = np.zeros(MEMBERS, dtype=bool)
        self.contacts = population.contacts_last_7_days.copy()
        self.cell_completes = np.zeros(len(self.cells))
        self.cell_in_progress = np.zeros(len(self.cells))
        self.events: list[tuple[float, int, int]] = []  # (hour, kind 0=finish 1=start, member)
        self.invitations = 0
        self.reminders = 0
        self.held_back = np.zeros(MEMBERS, dtype=bool)  # members a reminder was held back from
        self.soft_cells_reopened_hour: float | None = None  # as fieldwork_state.soft_cells_reopened_at

    @property
    def soft_cells_reopened(self) -> bool:
        return self.soft_cells_reopened_hour is not None

    def closes_at(self) -> np.ndarray:
        """Each cell's completes at which it closes now (the accounting's `cap`)."""
        return self.cells["cap" if self.soft_cells_reopened else "target_completes"].to_numpy()

    def budget_allowed(self) -> np.ndarray:
        check = fieldwork.contact_budget(self.contacts, self.cells, self.population.categories)
        return check.allowed & self.population.placeable

    def invite(self, members: np.ndarray, hour: float) -> None:
        self.invited_at[members] = hour
        self.contacts[members] += 1
        self.invitations += len(members)
        responds = self.population.luck[members] < self.population.rates[members]
        for member in members[responds]:
            heapq.heappush(self.events, (hour + self.population.delay[member], 1, int(member)))

    def remind(self, members: np.ndarray, hour: float) -> None:
        self.reminded_at[members] = hour
        self.contacts[members] += 1
        self.reminders += len(members)
        would_not = self.population.luck[members] >= self.population.rates[members]
        converted = would_not & (
            self.population.reminder_luck[members] < REMINDER_LIFT * self.population.rates[members]
        )
        for member in members[converted]:
            heapq.heappush(self.events, (hour + self.population.reminder_delay[member], 1, int(member)))

    def run_until(self, hour: float) -> None:
        while self.events and self.events[0][0] <= hour:
            when, kind, member = heapq.heappop(self.events)
            member_cells = self.codes[member][self.codes[member] >= 0]
            if kind == 0:
                self.cell_in_progress[member_cells] -= 1
                self.cell_completes[member_cells] += 1
                self.completed_at[member] = when
                continue
            if self.started[member]:
                continue
            self.started[member] = True
            closed = self.cell_completes + self.cell_in_progress >= self.closes_at()
            if closed[member_cells].any():
                self.screened[member] = True
                continue
            self.cell_in_progress[member_cells] += 1
            heapq.heappush(self.events, (when + SURVEY_HOURS, 0, member))

    def members_frame(self, hour: float) -> tuple[pd.DataFrame, np.ndarray]:
        invited = np.flatnonzero(~np.isnan(self.invited_at))
        frame = self.population.categories.iloc[invited].copy()
        in_progress = self.started[invited] & ~self.screened[invited] & np.isnan(self.completed_at[invited])
        frame[fieldwork.INVITED_AT] = as_times(self.invited_at[invited])
        frame[fieldwork.COMPLETED_AT] = as_times(self.completed_at[invited])
        frame[fieldwork.REMINDED_AT] = as_times(self.reminded_at[invited])
        frame[fieldwork.REMINDERS] = (~np.isnan(self.reminded_at[invited])).astype(int)
        frame[fieldwork.IN_PROGRESS] = in_progress
        frame[fieldwork.SCREENED_OUT] = self.screened[invited]
        return frame, invited

    def run(self) -> Outcome:
        pool = self.population.categories
        eligible = self.budget_allowed()
        wave = fieldwork.first_wave(self.cells, pool, self.predicted, self.settings, self.rng, eligible)
        self.invite(wave.positions, 0.0)
        hour, next_top_up = 0.0, TOP_UP_EVERY_HOURS
        invitable = np.full(len(self.cells), np.nan)  # the last top-up's look (none yet)
        while hour < FIELDWORK_HOURS:
            hour += STEP_HOURS
            self.run_until(hour)
            now = START + dt.timedelta(hours=hour)
            members, invited = self.members_frame(hour)
            accounting = fieldwork.account_cells(
                self.cells,
                members,
                now=now,
                rates=self.predicted[invited],
                curve=self.learned.curve,
                soft_cells_reopened=self.soft_cells_reopened,
            )
            close_at = START + dt.timedelta(hours=FIELDWORK_HOURS)
            reason = fieldwork.closing_reason(accounting, now, close_at, hard_target=self.targets[0].key)
            if reason:
                break
            if hour >= next_top_up:  # the asset's order: the top-up, then the reminders
                next_top_up += TOP_UP_EVERY_HOURS
                eligible = self.budget_allowed() & np.isnan(self.invited_at)
                extra = fieldwork.top_up(accounting, pool, self.predicted, self.settings, self.rng, eligible)
                self.invite(extra.positions, hour)
                invitable = extra.cells["invitable_completes"].to_numpy(dtype=float)
                if not self.soft_cells_reopened and fieldwork.stranded_hard_cells(extra.cells, self.targets[0].key):
                    self.soft_cells_reopened_hour = hour
            due = fieldwork.reminder_candidates(members, accounting, now, self.settings, invitable_completes=invitable)
            budget = fieldwork.contact_budget(self.contacts[invited], self.cells, members, considered=due)
            self.held_back[invited[due & ~budget.allowed]] = True
            remind = due & budget.allowed
            if remind.any():
                self.remind(invited[remind], hour)
        completed = np.flatnonzero(~np.isnan(self.completed_at))
        categories = self.population.categories.iloc[completed]
        deff, status = design_effect_of(categories, self.targets)
        return Outcome(
            len(completed),
            self.invitations,
            deviation_pp(categories, self.targets),
            deff,
            status,
            hour,
            self.reminders,
            reason or "close_at reached",
            int(self.held_back.sum()),
            self.soft_cells_reopened_hour,
        )


def as_times(hours: np.ndarray) -> np.ndarray:
    return (pd.Timestamp(START) + pd.to_timedelta(hours, unit="h")).to_numpy()


def run_seed(seed: int) -> dict[str, tuple[Outcome, float, float]]:
    """Each method's outcome, its invitations per complete as a ratio to the oracle's, and the oracle's."""
    targets = preset_targets("uk_nat_rep")
    population, learned = make_population(seed, targets)
    budget = fieldwork.contact_budget(
        population.contacts_last_7_days, fieldwork.cell_targets(targets, SIZE), population.categories
    )
    eligible = budget.allowed & population.placeable
    oracle = oracle_invitations(population, targets, eligible) / SIZE
    overall = np.full(MEMBERS, learned.overall_rate)
    results = {
        "(a) one wave, overall rate": one_wave(population, targets, overall, eligible, seed),
        "(b) one wave, learned cell rates": one_wave(
            population, targets, learned.predict(population.profiles), eligible, seed
        ),
        "(b') today's draw (quotas.select), learned rates": todays_draw(
            population, targets, learned.as_request_rates(), eligible
        ),
        "(c) fieldwork: waves, top-ups, reminders": FieldworkRun(population, targets, learned, seed).run(),
    }
    return {
        name: (outcome, per_complete(outcome.invitations, outcome) / oracle, oracle)
        for name, outcome in results.items()
    }


def per_complete(contacts: int, outcome: Outcome) -> float:
    return contacts / max(outcome.completes, 1)


def fieldwork_story(outcome: Outcome, oracle: float) -> str:
    """When (c) closed and why, and its contacts: invitations plus reminders (the oracle needs none)."""
    contacts = per_complete(outcome.invitations + outcome.reminders, outcome) / oracle
    return (
        f"closed at {outcome.hours:.0f} h ({outcome.closed_because}), {outcome.reminders} reminders "
        f"(invitations and reminders per complete {contacts:.3f} x the oracle's invitations), "
        f"{outcome.held_back} reminders held back by the contact budget, soft cells {reopened(outcome)}"
    )


def reopened(outcome: Outcome) -> str:
    hour = outcome.soft_cells_reopened_hour
    return "never reopened" if hour is None else f"reopened at {hour:.0f} h"


def main() -> None:
    started, cpu_started = time.perf_counter(), time.process_time()
    runs = []
    for seed in SEEDS:
        seed_started = time.perf_counter()
        results = run_seed(seed)
        runs.append(results)
        print(f"seed {seed} ({time.perf_counter() - seed_started:.1f} s):")
        for name, (outcome, ratio, oracle) in results.items():
            deff = (
                ""
                if outcome.design_effect is None
                else f", design effect {outcome.design_effect:.2f} ({outcome.weights_status})"
            )
            extra = "" if outcome.hours is None else "; " + fieldwork_story(outcome, oracle)
            print(
                f"  {name}: largest deviation {outcome.max_deviation_pp:.2f} pp, {outcome.completes} completes, "
                f"{outcome.invitations} invitations, "
                f"{outcome.invitations / max(outcome.completes, 1):.2f} per complete "
                f"= {ratio:.3f} x oracle{deff}{extra}"
            )
    print("spread over the seeds (min / max):")
    for name in runs[0]:
        deviations = [run[name][0].max_deviation_pp for run in runs]
        ratios = [run[name][1] for run in runs]
        completes = [run[name][0].completes for run in runs]
        print(
            f"  {name}: deviation {min(deviations):.2f} / {max(deviations):.2f} pp, "
            f"completes {min(completes)} / {max(completes)}, invitations per complete vs oracle "
            f"{min(ratios):.3f} / {max(ratios):.3f}"
        )
    fieldwork_name = "(c) fieldwork: waves, top-ups, reminders"
    met = all(
        run[fieldwork_name][0].max_deviation_pp <= MAX_DEVIATION_PP and run[fieldwork_name][1] <= MAX_ORACLE_RATIO
        for run in runs
    )
    print(
        f"targets for (c): every cell within {MAX_DEVIATION_PP:g} pp and <= {MAX_ORACLE_RATIO:g} x the oracle's "
        f"invitations: {'met' if met else 'MISSED'} on every seed; total {time.perf_counter() - started:.0f} s "
        f"({time.process_time() - cpu_started:.0f} s of CPU)"
    )


if __name__ == "__main__":
    main()
