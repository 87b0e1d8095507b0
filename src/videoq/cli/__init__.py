"""The ``videoq`` command line. Exit codes: 0 success, 1 job failed (or the API refused a
valid request), 2 usage error (a bad flag or field, a refused key, an unknown id), 3 API
unreachable or unavailable (after retrying for ``api_timeout_s``), 130 interrupted. Errors are
one line on stderr, never a traceback.

base       the group, settings, one-line errors and exit codes, calls through the SDK
jobs       submit, status, cancel, retry, jobs, download, feed, render
ops        dev, api, worker, process-pending, migrate, info
keys       keys create/list/revoke (over the API; straight to the database to bootstrap)
schedules  schedules create/list/show/delete
"""

from videoq.cli import jobs, keys, ops, schedules
from videoq.cli.base import main
from videoq.cli.jobs import watch_progress

__all__ = ["jobs", "keys", "main", "ops", "schedules", "watch_progress"]
