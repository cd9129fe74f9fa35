"""A job row's `status`: one spelling for every table that has one (generation results, evaluation
scores, an evaluation dataset's clips), since one flow writes what another reads."""
from __future__ import annotations

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
#: the statuses of a job whose output exists: made by this run, or found finished by an earlier one
DONE = (OK, SKIPPED)
#: characters of a row's reason or error: a table cell, the whole text is in the logs
REASON_CHARS = 300


def clipped(text: str, limit: int = REASON_CHARS) -> str:
    """`text` cut to `limit` characters, with an ellipsis: at a word when one ends in the last fifth,
    so no reason ends mid-word, else where the limit falls (a long path is kept in part, not dropped)."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]
    at_word = head.rsplit(" ", 1)[0]
    return (at_word if len(at_word) >= 0.8 * len(head) else head) + "…"


def one_line(text: str, limit: int = REASON_CHARS) -> str:
    """`text` with its line breaks and runs of spaces made single spaces, `clipped` to `limit`: an
    error quoted inside a one-line message."""
    return clipped(" ".join(text.split()), limit)
