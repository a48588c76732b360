"""Filters for backups: the moment a point-in-time restore goes back to."""

from __future__ import annotations

from datetime import UTC, datetime

from ansible.errors import AnsibleFilterError

LABEL_FORMAT = "%Y%m%dT%H%M%S%fZ"  # how point-in-time backups are named: sorts as it ages


def point_in_time(at: str, now: str | None = None) -> dict:
    """`at` (ISO 8601 with its UTC offset) as {'iso': the UTC time for recovery_target_time, 'label': the same
    time as point-in-time backups are named, 'epoch': the same in seconds since 1970, as pgBackRest dates its
    backups}; an `at` without an offset (whose zone?) or not in the past is refused.
    `now` (ISO 8601) stands in for the clock, for tests."""
    try:
        moment = datetime.fromisoformat(str(at).strip())
    except ValueError:
        raise AnsibleFilterError(
            f"at={at!r} is not a time: give an ISO 8601 time with its offset, e.g. 2026-11-25T09:30:00Z"
        ) from None
    if moment.tzinfo is None:
        raise AnsibleFilterError(
            f"at={at!r} has no UTC offset, so which moment it means depends on a time zone: add one, e.g. Z or +01:00"
        )
    moment = moment.astimezone(UTC)
    clock = datetime.fromisoformat(now).astimezone(UTC) if now else datetime.now(UTC)
    if moment >= clock:
        raise AnsibleFilterError(f"at={at!r} is not in the past (now is {clock.isoformat()}): nothing to go back to")
    return {"iso": moment.isoformat(sep=" "), "label": moment.strftime(LABEL_FORMAT), "epoch": moment.timestamp()}


class FilterModule:
    def filters(self):
        return {"point_in_time": point_in_time}
