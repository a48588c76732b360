"""Backup retention (module_utils/registry_backups): a plan's backup_keep, a count or GFS counts per period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.registry_backups import kept_ids, retention_problem


def daily_backups(days: int, per_day: int = 1, last: datetime = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)) -> list[dict]:
    """`per_day` backups a day (an hour apart) for `days` days up to `last`, newest first, named by their time."""
    backups = []
    for day in range(days):
        for hour in range(per_day):
            taken = last - timedelta(days=day, hours=hour)
            backups.append({"backup_id": taken.strftime("%Y%m%dT%H"), "taken_at": taken})
    return backups


def test_a_count_keeps_the_newest_that_many():
    backups = daily_backups(10, per_day=2)
    assert kept_ids(backups, 3) == {"20261125T03", "20261125T02", "20261124T03"}
    assert kept_ids(backups, 0) == set()


def test_gfs_keeps_the_newest_of_each_latest_day_week_and_month():
    backups = daily_backups(120, per_day=2)  # 2026-07-29 … 2026-11-25, twice a day
    kept = kept_ids(backups, {"daily": 7, "weekly": 4, "monthly": 3})
    days = {b for b in kept if b >= "20261119"}
    assert days == {f"202611{d}T03" for d in range(19, 26)}, "the newest of each of the 7 latest days"
    # ISO weeks end on Sunday: the newest of the 3 weeks before this one are their Sundays' (22, 15, 8 November).
    assert {"20261122T03", "20261115T03", "20261108T03"} <= kept
    # Months: November's newest is today's; October's and September's are their last days'.
    assert {"20261031T03", "20260930T03"} <= kept
    assert kept == days | {"20261115T03", "20261108T03", "20261031T03", "20260930T03"}
    assert len(kept) == 11, "one backup stands for its day, its week and its month"


def test_gfs_counts_days_with_a_backup_not_calendar_days():
    backups = [b for b in daily_backups(30) if b["taken_at"].day % 3 == 0]  # one every third day
    assert kept_ids(backups, {"daily": 2}) == {"20261124T03", "20261121T03"}


@pytest.mark.parametrize(
    ("keep", "problem"),
    [
        (7, None),
        (0, None),
        ({"daily": 7, "weekly": 4, "monthly": 3}, None),
        ({"weekly": 2}, None),
        (-1, "0 or more"),
        (True, "a count or"),
        ({}, "counts per period"),
        ({"yearly": 1}, "counts per period"),
        ({"daily": -1}, "daily=-1"),
        ({"daily": "7"}, "daily='7'"),
        ({"daily": 0, "weekly": 0}, "keeps no backup"),
        ("7", "counts per period"),
    ],
)
def test_retention_problem_names_what_is_wrong(keep, problem):
    found = retention_problem(keep)
    assert (found is None) if problem is None else (problem in found), found
