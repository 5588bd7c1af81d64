"""A synthetic opt-in panel for tests, benchmarks and the local run.

`generate_profiles(n, seed)` returns one row per member with the contract's profile fields and
values. The panel is skewed the way opt-in panels are (older, more ABC1, more graduates, more
southern, fewer non-voters than the UK adult population) and keeps plausible associations: young
members live in London more often and are less often AB; qualifications follow age and grade;
Leave follows age and education; SNP only in Scotland, Plaid only in Wales, Northern Ireland votes
for `other` parties; members too young at the 2016 referendum or an election did not vote there.

Every variable is drawn from a probability table conditional on a few earlier variables, fully
vectorised (one inverse-CDF lookup per variable), so 1,000,000 rows take well under 2 seconds.
Categorical columns are `pandas.Categorical` over the contract's values (compare them to plain
strings as usual; `.astype(str)` gives plain strings).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from panel_pipeline.shared.contract import AGE_BAND_LOWER_BOUNDS, PROFILE_CATEGORIES

AGE_BANDS = PROFILE_CATEGORIES["age_band"]
REGIONS = PROFILE_CATEGORIES["region"]
GRADES = PROFILE_CATEGORIES["social_grade"]
EDUCATION = PROFILE_CATEGORIES["education"]
EU_REF = PROFILE_CATEGORIES["eu_ref_vote"]
VOTE_2019 = PROFILE_CATEGORIES["vote_2019"]
VOTE_2024 = PROFILE_CATEGORIES["vote_2024"]
GENDERS = PROFILE_CATEGORIES["gender"]

# Population shares (UK adults, see sampler/data/uk_targets.csv) times opt-in panel skew.
AGE_BAND_POPULATION = np.array([10.51, 17.05, 16.39, 16.76, 15.85, 12.54, 10.89])
AGE_BAND_SKEW = np.array([0.35, 0.6, 0.85, 1.1, 1.4, 1.6, 0.9])
FEMALE_SHARE_BY_AGE = np.array([0.495, 0.514, 0.513, 0.508, 0.509, 0.519, 0.568])
REGION_POPULATION = np.array([4.00, 11.06, 8.16, 7.31, 8.78, 9.44, 13.00, 13.85, 8.69, 4.68, 8.26, 2.76])
REGION_SKEW = np.array([0.8, 0.8, 0.8, 1.0, 1.0, 1.3, 1.35, 1.4, 1.3, 0.85, 0.7, 0.5])
LONDON_BY_AGE = np.array([1.6, 1.5, 1.2, 1.0, 0.8, 0.6, 0.6])
GRADE_POPULATION = np.array([27.0, 29.0, 21.0, 23.0])
GRADE_SKEW = np.array([1.6, 1.1, 0.9, 0.55])
AB_BY_AGE = np.array([0.6, 0.9, 1.1, 1.2, 1.1, 1.0, 0.9])
DE_BY_AGE = np.array([1.3, 1.0, 0.9, 0.9, 1.0, 1.2, 1.4])
EDUCATION_POPULATION = np.array([18.2, 9.7, 13.3, 5.3, 16.9, 33.8, 2.8])
EDUCATION_SKEW = np.array([0.7, 0.9, 1.0, 1.0, 1.0, 1.3, 1.0])
EDUCATION_BY_AGE = np.array(  # rows: age band; columns: EDUCATION
    [
        [0.3, 0.8, 1.2, 0.6, 2.0, 0.8, 0.6],
        [0.4, 0.8, 1.0, 0.8, 1.2, 1.4, 0.8],
        [0.5, 0.9, 1.0, 0.9, 1.0, 1.4, 1.0],
        [0.8, 1.0, 1.0, 1.0, 0.9, 1.1, 1.0],
        [1.2, 1.1, 1.0, 1.2, 0.8, 0.9, 1.1],
        [2.0, 1.1, 0.9, 1.3, 0.7, 0.7, 1.2],
        [3.0, 1.0, 0.8, 1.3, 0.6, 0.5, 1.3],
    ]
)
EDUCATION_BY_GRADE = np.array(  # rows: GRADES
    [
        [0.4, 0.6, 0.8, 0.7, 0.9, 2.0, 1.0],
        [0.7, 0.9, 1.0, 0.9, 1.1, 1.2, 1.0],
        [1.2, 1.2, 1.1, 1.6, 1.0, 0.6, 1.0],
        [1.8, 1.3, 1.1, 1.2, 0.9, 0.4, 1.0],
    ]
)
LEAVE_BY_AGE = np.array([0.30, 0.38, 0.45, 0.52, 0.58, 0.62, 0.64])
LEAVE_SHIFT_BY_EDUCATION = np.array([0.15, 0.10, 0.08, 0.10, 0.0, -0.15, 0.05])
EU_ABSTAIN_BY_AGE = np.array([0.35, 0.30, 0.22, 0.15, 0.10, 0.08, 0.10])
REMAIN_LEANING_REGIONS = ("London", "Scotland", "Northern Ireland")

ENGLAND, WALES, SCOTLAND, NORTHERN_IRELAND = range(4)
NATION_OF_REGION = np.array([ENGLAND] * 9 + [WALES, SCOTLAND, NORTHERN_IRELAND])

# Past vote 2019 (columns VOTE_2019) by EU referendum vote (rows EU_REF), Great Britain.
VOTE_2019_BY_EU = np.array(
    [
        [0.20, 0.40, 0.18, 0.01, 0.04, 0.10, 0.05, 0.02, 0.15],
        [0.55, 0.18, 0.03, 0.05, 0.01, 0.04, 0.01, 0.03, 0.15],
        [0.10, 0.15, 0.03, 0.01, 0.02, 0.03, 0.01, 0.02, 0.67],
    ]
)
VOTE_BY_AGE_GROUP = np.array(  # rows: under 35, 35-64, 65+; columns: VOTE_2019 / VOTE_2024 order
    [
        [0.6, 1.4, 1.0, 0.8, 1.6, 1.0, 1.0, 1.0, 1.2],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        [1.4, 0.8, 1.0, 1.2, 0.6, 1.0, 1.0, 1.0, 0.6],
    ]
)
# Vote 2024 (columns VOTE_2024) by vote 2019 (rows VOTE_2019).
VOTE_2024_BY_2019 = np.array(
    [
        [0.55, 0.08, 0.06, 0.20, 0.02, 0.01, 0.01, 0.02, 0.07],
        [0.02, 0.70, 0.05, 0.03, 0.10, 0.01, 0.01, 0.03, 0.07],
        [0.05, 0.25, 0.55, 0.02, 0.07, 0.01, 0.01, 0.02, 0.04],
        [0.10, 0.05, 0.01, 0.70, 0.01, 0.00, 0.00, 0.03, 0.10],
        [0.00, 0.20, 0.05, 0.01, 0.65, 0.00, 0.00, 0.03, 0.07],
        [0.02, 0.25, 0.02, 0.02, 0.03, 0.55, 0.00, 0.01, 0.10],
        [0.02, 0.15, 0.02, 0.03, 0.04, 0.00, 0.60, 0.02, 0.12],
        [0.05, 0.08, 0.03, 0.08, 0.05, 0.00, 0.00, 0.60, 0.11],
        [0.04, 0.12, 0.02, 0.06, 0.04, 0.01, 0.01, 0.02, 0.68],
    ]
)


def _party_mask(parties: tuple[str, ...]) -> np.ndarray:
    """Which parties stand in each nation (rows ENGLAND, WALES, SCOTLAND, NORTHERN_IRELAND)."""
    absent = {
        ENGLAND: {"snp", "plaid_cymru"},
        WALES: {"snp"},
        SCOTLAND: {"plaid_cymru"},
        NORTHERN_IRELAND: {"conservative", "labour", "lib_dem", "brexit_party", "reform_uk", "snp", "plaid_cymru"},
    }
    return np.array([[party not in absent[nation] for party in parties] for nation in range(4)], dtype=float)


# Northern Ireland's parties (DUP, Sinn Féin, Alliance, SDLP, UUP) are all `other` in the contract.
NATIONAL_PARTY_BOOSTS: tuple[tuple[int, str, float], ...] = (
    (NORTHERN_IRELAND, "other", 25.0),
    (SCOTLAND, "snp", 5.0),
    (WALES, "plaid_cymru", 2.0),
)


def _boost_national_parties(table: np.ndarray, parties: tuple[str, ...]) -> None:
    """Scale in place; `table` has nations on its second-to-last axis, parties on the last."""
    for nation, party, factor in NATIONAL_PARTY_BOOSTS:
        table[..., nation, parties.index(party)] *= factor


def generate_profiles(n: int, seed: int = 0, as_of_year: int | None = None) -> pd.DataFrame:
    """`n` synthetic panel members (index 0..n-1); reproducible for a given seed and year."""
    year = as_of_year or dt.date.today().year
    rng = np.random.default_rng(seed)
    age_band = _draw(rng, np.zeros(n, dtype=np.int64), _normalise(AGE_BAND_POPULATION * AGE_BAND_SKEW)[None, :])
    age = _ages_within_bands(rng, age_band)
    gender = _draw(rng, age_band, _gender_table())
    region = _draw(rng, age_band, _region_table())
    grade = _draw(rng, age_band * len(REGIONS) + region, _grade_table())
    education = _draw(rng, age_band * len(GRADES) + grade, _education_table())
    remain_leaning = np.isin(region, [REGIONS.index(name) for name in REMAIN_LEANING_REGIONS])
    eu_ref = _draw(rng, (age_band * len(EDUCATION) + education) * 2 + remain_leaning, _eu_ref_table())
    nation = NATION_OF_REGION[region]
    age_group = np.searchsorted([35, 65], age, side="right")
    vote_2019 = _draw(rng, (eu_ref * 3 + age_group) * 4 + nation, _vote_2019_table())
    vote_2024 = _draw(rng, vote_2019 * 4 + nation, _vote_2024_table())
    birth_year = year - age
    did_not_vote = {name: len(PROFILE_CATEGORIES[name]) - 1 for name in ("eu_ref_vote", "vote_2019", "vote_2024")}
    eu_ref[2016 - birth_year < 18] = did_not_vote["eu_ref_vote"]
    vote_2019[2019 - birth_year < 18] = did_not_vote["vote_2019"]
    vote_2024[2024 - birth_year < 18] = did_not_vote["vote_2024"]
    return pd.DataFrame(
        {
            "gender": _categorical(gender, "gender"),
            "birth_year": birth_year,
            "age": age,
            "age_band": _categorical(age_band, "age_band"),
            "region": _categorical(region, "region"),
            "social_grade": _categorical(grade, "social_grade"),
            "education": _categorical(education, "education"),
            "vote_2019": _categorical(vote_2019, "vote_2019"),
            "vote_2024": _categorical(vote_2024, "vote_2024"),
            "eu_ref_vote": _categorical(eu_ref, "eu_ref_vote"),
        }
    )


def _draw(rng: np.random.Generator, groups: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each row, a category index drawn from `table[groups[row]]` (rows of `table` sum to 1).

    Shifting each group's cumulative probabilities by the group number makes one sorted array,
    so a single searchsorted draws every row at once.
    """
    cumulative = np.cumsum(table, axis=1)
    cumulative[:, -1] = 1.0
    offsets = cumulative + np.arange(len(table))[:, None]
    flat_index = np.searchsorted(offsets.ravel(), groups + rng.random(len(groups)), side="right")
    return (flat_index - groups * table.shape[1]).astype(np.int64)


def _normalise(weights: np.ndarray) -> np.ndarray:
    totals = weights.sum(axis=-1, keepdims=True)
    return np.divide(weights, totals, out=np.zeros_like(weights, dtype=float), where=totals > 0)


def _ages_within_bands(rng: np.random.Generator, age_band: np.ndarray) -> np.ndarray:
    lower = np.asarray(AGE_BAND_LOWER_BOUNDS)[age_band]
    width = np.append(np.diff(AGE_BAND_LOWER_BOUNDS), 1)[age_band]
    age = lower + np.floor(rng.random(len(age_band)) * width).astype(np.int64)
    oldest = age_band == len(AGE_BANDS) - 1
    age[oldest] += np.minimum(rng.exponential(6.0, int(oldest.sum())).astype(np.int64), 25)
    return age


def _gender_table() -> np.ndarray:
    female = FEMALE_SHARE_BY_AGE * 1.1 / (FEMALE_SHARE_BY_AGE * 1.1 + (1 - FEMALE_SHARE_BY_AGE))
    other = np.array([0.015, 0.010, 0.005, 0.004, 0.003, 0.002, 0.002])
    prefer_not_to_say = np.full(len(AGE_BANDS), 0.005)
    binary = 1 - other - prefer_not_to_say
    return np.column_stack([female * binary, (1 - female) * binary, other, prefer_not_to_say])


def _region_table() -> np.ndarray:
    table = np.tile(REGION_POPULATION * REGION_SKEW, (len(AGE_BANDS), 1))
    table[:, REGIONS.index("London")] *= LONDON_BY_AGE
    return _normalise(table)


def _grade_table() -> np.ndarray:
    table = np.tile(GRADE_POPULATION * GRADE_SKEW, (len(AGE_BANDS), len(REGIONS), 1))
    table[:, :, 0] *= AB_BY_AGE[:, None]
    table[:, :, 3] *= DE_BY_AGE[:, None]
    for name in ("London", "South East"):
        table[:, REGIONS.index(name), 0] *= 1.3
    for name in ("North East", "North West", "Yorkshire and The Humber", "Wales", "Northern Ireland"):
        table[:, REGIONS.index(name), 3] *= 1.2
    return _normalise(table.reshape(-1, len(GRADES)))


def _education_table() -> np.ndarray:
    base = EDUCATION_POPULATION * EDUCATION_SKEW
    table = base[None, None, :] * EDUCATION_BY_AGE[:, None, :] * EDUCATION_BY_GRADE[None, :, :]
    return _normalise(table.reshape(-1, len(EDUCATION)))


def _eu_ref_table() -> np.ndarray:
    leave = LEAVE_BY_AGE[:, None, None] + LEAVE_SHIFT_BY_EDUCATION[None, :, None] - np.array([0.0, 0.12])[None, None, :]
    leave = np.clip(leave, 0.1, 0.9)
    abstain = np.broadcast_to(EU_ABSTAIN_BY_AGE[:, None, None], leave.shape)
    table = np.stack([(1 - leave) * (1 - abstain), leave * (1 - abstain), abstain], axis=-1)
    return table.reshape(-1, len(EU_REF))


def _vote_2019_table() -> np.ndarray:
    table = (
        VOTE_2019_BY_EU[:, None, None, :]
        * VOTE_BY_AGE_GROUP[None, :, None, :]
        * _party_mask(VOTE_2019)[None, None, :, :]
    )
    _boost_national_parties(table, VOTE_2019)
    return _normalise(table.reshape(-1, len(VOTE_2019)))


def _vote_2024_table() -> np.ndarray:
    table = VOTE_2024_BY_2019[:, None, :] * _party_mask(VOTE_2024)[None, :, :]
    _boost_national_parties(table, VOTE_2024)
    table = table.reshape(-1, len(VOTE_2024))
    # A 2019 party that cannot occur in this nation leaves an empty row; it is never drawn from.
    table[table.sum(axis=1) == 0, -1] = 1.0
    return _normalise(table)


def _categorical(codes: np.ndarray, field: str) -> pd.Categorical[str]:
    return pd.Categorical.from_codes(codes, categories=pd.Index(PROFILE_CATEGORIES[field]))
