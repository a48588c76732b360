"""The runner's log lines are JSON, one a line, naming the job, tenant and run (or event and account) they belong
to: what a log shipper filters one job's or one tenant's story by."""

from __future__ import annotations

import io
import json
import logging

from webhook_runner import logs


def lines(emit) -> list[dict]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonLines())
    logger = logging.getLogger("webhook_runner.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_jobs_lines_name_it_its_tenant_and_run_and_only_inside_it():
    def emit(log):
        with logs.context(job=42, tenant='acme "eu"', run="job-42-1"):
            log.info("job %s: %s", 42, "tenant_provision.yml")
            with logs.context(tenant="other"):
                log.warning("nested")
        log.info("between jobs")

    inside, nested, after = lines(emit)
    assert inside["message"] == "job 42: tenant_provision.yml" and inside["level"] == "INFO"
    assert (inside["job"], inside["tenant"], inside["run"]) == (42, 'acme "eu"', "job-42-1")
    assert (nested["job"], nested["tenant"]) == (42, "other")
    assert not {"job", "tenant", "run"} & set(after)


def test_a_stored_events_line_names_the_event_and_account_and_an_exception_is_kept_whole():
    def emit(log):
        log.info("event %s stored", 7, extra={"event": 7, "account": "a-1", "password": "never"})
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            log.exception("worker stopped")

    stored, failed = lines(emit)
    assert (stored["event"], stored["account"]) == (7, "a-1")
    assert "password" not in stored  # only the known fields are taken from `extra`
    assert failed["level"] == "ERROR" and "RuntimeError: boom\nsecond line" in failed["exception"]
