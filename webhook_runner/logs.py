"""The runner's log lines: one JSON object a line (time, level, logger, message), with the job, tenant and playbook run
a worker's line belongs to, and the event and account a stored notification's line names, so a log shipper can
follow one job, one tenant or one run across the web process, the workers and the audit trail (whose run ids these
are). Nothing the runner logs holds a secret: the callback's token is never logged (gunicorn keeps no access log)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType

# What a line may carry besides its message: from the context (`context`) or a call's `extra`.
FIELDS = ("job", "tenant", "run", "event", "account")
_context: ContextVar[Mapping] = ContextVar("webhook_runner_log_context", default=MappingProxyType({}))


@contextmanager
def context(**fields) -> Iterator[None]:
    """Every line logged inside names these fields (a worker's job: job, tenant, run)."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context.get(),
            **{name: getattr(record, name) for name in FIELDS if hasattr(record, name)},
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: int = logging.INFO) -> None:
    """JSON lines on stderr (supervisord keeps each program's), for the runner's own loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    runner = logging.getLogger("webhook_runner")
    runner.handlers[:] = [handler]
    runner.setLevel(level)
    runner.propagate = False
