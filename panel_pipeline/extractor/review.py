"""What run metadata may say about responses the Extractor could not use: ids, codes and counts.

Invariant: nothing here returns what a member wrote. Answers are personal data and some are
special-category data (vote, in `vote_2019`/`vote_2024`), and run metadata is read by anyone with
the Dagster UI. `without_values` strips every quoted or bracketed value (Python reprs of answers,
records and fields) out of a reason; `unmapped_table` groups the profile answers the mapping could
not place by attribute, question id, answer code (the SurveyGizmo option id, when the answer has
one) and reason, with a count; `shown_rows` is what a metadata table may show of any rows. Pure;
no Dagster, no Mongo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from panel_pipeline.extractor.normalize import ProfileProblem

VALUE = "<value>"
_OPENING = {"'": "'", '"': '"', "{": "}", "[": "]"}


def without_values(text: str) -> str:
    """`text` with each quoted string and each {...} / [...] group (quote-aware, nested) as `<value>`."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in _OPENING and not _inside_word(text, index):
            index = _end_of_value(text, index)
            out.append(VALUE)
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _inside_word(text: str, index: int) -> bool:
    """An apostrophe between letters (`member's`) opens no quote."""
    return text[index] == "'" and 0 < index < len(text) - 1 and text[index - 1].isalnum() and text[index + 1].isalnum()


def _end_of_value(text: str, start: int) -> int:
    """The index just after the value opening at `start` (the end of text if it never closes)."""
    closers = [_OPENING[text[start]]]
    index = start + 1
    while index < len(text) and closers:
        char = text[index]
        if closers[-1] in "'\"":
            if char == "\\":
                index += 1
            elif char == closers[-1]:
                closers.pop()
        elif char in _OPENING:
            closers.append(_OPENING[char])
        elif char == closers[-1]:
            closers.pop()
        index += 1
    return index


UnmappedKey = tuple[str, str, str, str]


def unmapped_key(problem: ProfileProblem) -> UnmappedKey:
    """What a problem is counted under: attribute, question id, answer code ("-" if none), reason."""
    return problem.attribute, problem.question_id, problem.answer_code or "-", without_values(problem.reason)


def unmapped_rows(counts: Counter[UnmappedKey], limit: int) -> list[tuple[str, str, str, str, int]]:
    """The `limit` most frequent kinds of problem, each with its count."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [(*key, count) for key, count in ranked]


Cell = str | int | float


def shown_rows(rows: Iterable[Sequence[Cell]]) -> list[tuple[Cell, ...]]:
    """`rows` for a metadata table, every text cell passed through `without_values` (numbers are
    counts and shares, never answers)."""
    return [tuple(without_values(cell) if isinstance(cell, str) else cell for cell in row) for row in rows]
