"""A job row's `status`: one spelling for every table that has one (generation results, evaluation
scores, an evaluation dataset's clips), since one flow writes what another reads."""
from __future__ import annotations

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
#: the statuses of a job whose output exists: made by this run, or found finished by an earlier one
DONE = (OK, SKIPPED)
