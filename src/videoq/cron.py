"""Cron expressions in a time zone: when a schedule's ticks fall (:mod:`videoq.store.schedules`
keeps the next one, the workers' ticker fires it).

Five fields (minute, hour, day of month, month, day of week; ``L``, ``#`` and names as in
Debian cron) or one of the macros ``@hourly``, ``@daily``/``@midnight``, ``@weekly``,
``@monthly``, ``@yearly``/``@annually``; evaluated by ``cronsim`` on wall-clock time in an IANA
zone (:mod:`zoneinfo`). Across a DST change a job at a fixed time runs as Debian cron runs it:
a time the clocks skip runs at the first minute after the gap, a time they repeat runs once
(its first occurrence); ``*`` hours and minutes run on every real hour and minute.
"""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim, CronSimError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Missed ticks past this many are not counted one by one (an outage of a year of
#: every-minute ticks would take seconds to count): the count says "at least".
MAX_COUNTED = 1000


@functools.cache
def zones() -> frozenset[str]:
    """Every IANA zone name this machine knows (the OS's database, else the tzdata wheel)."""
    return frozenset(zoneinfo.available_timezones())


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name``; :class:`ValueError` for anything else (paths, abbreviations)."""
    if name not in zones():
        raise ValueError("must be an IANA time zone name, e.g. Europe/Paris or UTC")
    return zoneinfo.ZoneInfo(name)


def expand(expr: str) -> str:
    """``expr`` with a macro replaced by its five fields, and spaces normalised."""
    text = " ".join(expr.split())
    return MACROS.get(text.lower(), text)


def check(expr: str) -> str:
    """``expr`` normalised (:func:`expand`), or :class:`ValueError` saying what is wrong: not
    five fields (seconds are not supported: a minute is the finest tick), a bad field, or an
    expression that never fires (``0 0 31 2 *``)."""
    fields = expand(expr)
    if len(fields.split()) != 5:
        raise ValueError(
            "must have five fields (minute hour day-of-month month day-of-week) or be one of "
            + ", ".join(MACROS)
        )
    try:
        next(CronSim(fields, datetime(2000, 1, 1)))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression: {str(exc).lower()}") from None
    except StopIteration:
        raise ValueError("never fires") from None
    return fields


@dataclass(frozen=True)
class Due:
    """The tick a schedule fires now, those it skipped, and the one after."""

    tick: datetime
    skipped: int
    next: datetime


def after(expr: str, tz: str, when: datetime) -> datetime:
    """The first tick strictly after ``when``, in UTC (:class:`ValueError` when there is none
    within 50 years)."""
    try:
        found = next(CronSim(expand(expr), when.astimezone(zone(tz))))
    except StopIteration:
        raise ValueError("never fires") from None
    return found.astimezone(UTC)


def due(expr: str, tz: str, expected: datetime, now: datetime) -> Due:
    """What fires at ``now`` for a schedule whose next tick was ``expected`` (at or before
    ``now``): the most recent tick up to ``now``; the ticks between ``expected`` and it are
    skipped (an outage, or a ticker that could not submit), counted up to
    :data:`MAX_COUNTED`."""
    fields, local = expand(expr), zone(tz)
    tick, skipped = expected, 0
    ticks = CronSim(fields, expected.astimezone(local))
    for following in ticks:
        if following > now:
            return Due(tick.astimezone(UTC), skipped, following.astimezone(UTC))
        tick, skipped = following, skipped + 1
        if skipped == MAX_COUNTED:
            break
    # Too many to count: the latest tick up to now, found backwards (microseconds kept, so a
    # tick at exactly ``now`` is found too).
    latest = next(CronSim(fields, now.astimezone(local).replace(microsecond=1), reverse=True))
    return Due(latest.astimezone(UTC), skipped, after(fields, tz, latest))
