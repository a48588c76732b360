"""python -m webhook_runner COMMAND: the workers and their passes (gunicorn serves the app: docs/runner.md).

worker [--drain [--account ID]]
                       take the inbox until SIGTERM (with --drain: until nothing, or nothing of ID, is pending)
reconcile [--check]    compare Kill Bill with the registry; queue repairs (--check: report only)
housekeeping           prune finished work older than retention_days (also a periodic worker pass)
recover                queue a job for each move no run finishes (also a periodic worker pass)
mail                   send the customers' e-mails that are due (also a worker pass)
schedule [--now TIME]  run the periodic jobs that are due (also a worker pass; --now: as if it were TIME, an
                       ISO 8601 time with its offset, for tests: the schedules it runs count from then)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import datetime

import psycopg

from . import logs
from .config import ConfigError, load_settings
from .killbill import KillBillError
from .worker import Worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webhook_runner", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="take the inbox and run playbooks")
    worker.add_argument("--drain", action="store_true", help="stop once nothing is pending or due")
    worker.add_argument("--name", help="worker name in jobs and the audit trail (default host:pid)")
    worker.add_argument("--account", help="with --drain: that Kill Bill account's work only")
    reconcile = commands.add_parser("reconcile", help="compare Kill Bill with the registry and repair drift")
    reconcile.add_argument("--check", action="store_true", help="report drift only, queue nothing")
    commands.add_parser("housekeeping", help="prune finished jobs, events and placements past retention_days")
    commands.add_parser("recover", help="queue the recovery of moves no run finishes")
    commands.add_parser("mail", help="send the customers' e-mails that are due")
    schedule = commands.add_parser("schedule", help="run the periodic jobs that are due")
    schedule.add_argument("--now", type=_aware_time, help="run what is due at this time (ISO 8601, with offset)")
    schedule.add_argument("--name", help="worker name in jobs and the audit trail (default host:pid)")
    args = parser.parse_args(argv)
    if getattr(args, "account", None) and not args.drain:
        parser.error("--account goes with --drain (a serving worker takes every account)")
    logs.configure()
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"webhook_runner: {error}", file=sys.stderr)
        return 2

    if args.command == "worker" and not args.drain:
        return serve(settings, args.name)
    runner = Worker(settings, name=getattr(args, "name", None))
    if args.command == "reconcile":
        try:
            drift = runner.reconcile(repair=not args.check)
        except KillBillError as error:
            print(f"reconcile: Kill Bill unreachable: {error}", file=sys.stderr)
            return 1
        for line in drift:
            print(("drift: " if args.check else "queued: ") + line)
        print(f"{len(drift)} tenant(s) drifted from Kill Bill" if drift else "no drift: the registry matches Kill Bill")
        return 0
    if args.command == "housekeeping":
        if settings.retention_days <= 0:
            print("housekeeping: retention_days is 0: everything is kept")
            return 0
        pruned = runner.housekeeping()
        if not pruned:
            print("housekeeping: a worker's pass is pruning now; nothing done")
            return 0
        print(f"pruned (older than {settings.retention_days:g} days): "
              + ", ".join(f"{n} {table}" for table, n in pruned.items()))  # fmt: skip
        return 0
    if args.command == "recover":
        lines = runner.recover()
        for line in lines:
            print(line)
        if not lines:
            print(f"recover: no move stuck for over {settings.move_stuck_seconds:g} s"
                  " (or a worker's pass is at it now)")  # fmt: skip
        return 0
    if args.command == "mail":
        if settings.mail is None:
            print("mail: the settings have no mail object: nothing is sent (docs/mail.md)", file=sys.stderr)
            return 2
        lines = runner.send_mail()
        for line in lines:
            print(line)
        if not lines:
            print("mail: nothing due (or another worker is sending it now)")
        return 0
    if args.command == "schedule":
        lines = runner.run_schedules(args.now)
        for line in lines:
            print(line)
        if not lines:
            print("schedule: nothing due (or another worker is running it now); GET /schedules shows the next runs")
        return 0
    runner.drain(only=args.account)
    return 0


def _aware_time(text: str) -> datetime:
    """--now: an ISO 8601 time with its UTC offset (a naive one would be read in whatever zone the host has)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add one, e.g. {text}+00:00")
    return moment


def serve(settings, name: str | None) -> int:
    """Work until SIGTERM (the job in progress finishes first); ride out registry outages."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        try:
            Worker(settings, name=name).run(stop)
        except psycopg.OperationalError as error:
            logging.getLogger("webhook_runner.worker").error("registry unreachable, retrying in 5 s: %s", error)
            stop.wait(5)
        except Exception:  # an error the worker could not pin on one account: start it again, never crash-loop
            logging.getLogger("webhook_runner.worker").exception("worker stopped by an error; starting again in 5 s")
            stop.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
