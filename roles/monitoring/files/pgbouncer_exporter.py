#!/usr/bin/python3
"""A Prometheus exporter for PgBouncer 1.18, one process for every PgBouncer, the multi-target way of the blackbox
exporter: Prometheus asks GET /probe?target=<name>, and the exporter reads <name>.json in the --pgbouncers directory
(host, port, user, password_file, and optionally sslmode and sslrootcert), logs in to that PgBouncer's console and
answers with what SHOW STATS, SHOW POOLS, SHOW DATABASES and SHOW LISTS say. A PgBouncer added later is one more
file; nothing restarts.

Debian's prometheus-pgbouncer-exporter (1.7) reads SHOW STATS' `total_requests`, which PgBouncer 1.8 replaced by
`total_xact_count` and `total_query_count` (a KeyError on every scrape with 1.18), and never reconnects after its
first connection; PyPI's 2.x pins psycopg2 2.8 and prometheus_client 0.8. This one uses Debian's python3 with
python3-psycopg and python3-prometheus-client, and connects at each scrape (a PgBouncer restarted in between is
read again at once). The metric names follow prometheus-community/pgbouncer_exporter's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
CONNECT_TIMEOUT = 3  # seconds: a PgBouncer that does not answer fails this scrape, not the next ones

# SHOW STATS (per database): column, metric, help. Times are in microseconds; the metrics in seconds.
STATS = (
    ("total_xact_count", "pgbouncer_stats_sql_transactions_pooled_total", "Transactions pooled.", 1),
    ("total_query_count", "pgbouncer_stats_queries_pooled_total", "Queries pooled.", 1),
    ("total_received", "pgbouncer_stats_received_bytes_total", "Bytes received from clients.", 1),
    ("total_sent", "pgbouncer_stats_sent_bytes_total", "Bytes sent to clients.", 1),
    ("total_xact_time", "pgbouncer_stats_server_in_transaction_seconds_total", "Time spent in transactions.", 1e-6),
    ("total_query_time", "pgbouncer_stats_queries_duration_seconds_total", "Time spent running queries.", 1e-6),
    ("total_wait_time", "pgbouncer_stats_client_wait_seconds_total", "Time clients waited for a server.", 1e-6),
)
# SHOW POOLS (per database and user).
POOLS = (
    ("cl_active", "pgbouncer_pools_client_active_connections", "Clients linked to a server connection."),
    ("cl_waiting", "pgbouncer_pools_client_waiting_connections", "Clients waiting for a server connection."),
    ("sv_active", "pgbouncer_pools_server_active_connections", "Server connections linked to a client."),
    ("sv_idle", "pgbouncer_pools_server_idle_connections", "Server connections idle and ready."),
    ("sv_used", "pgbouncer_pools_server_used_connections", "Server connections idle past server_check_delay."),
    ("sv_login", "pgbouncer_pools_server_login_connections", "Server connections logging in."),
)
# SHOW DATABASES (per database).
DATABASES = (
    ("current_connections", "pgbouncer_databases_current_connections", "Server connections of the database."),
    ("pool_size", "pgbouncer_databases_pool_size", "The database's pool size."),
    ("paused", "pgbouncer_databases_paused", "1 while the database is paused."),
    ("disabled", "pgbouncer_databases_disabled", "1 while the database takes no new clients."),
)
# SHOW LISTS (one row per list).
LISTS = {
    "used_clients": ("pgbouncer_used_clients", "Client connections in use."),
    "used_servers": ("pgbouncer_used_servers", "Server connections in use."),
    "free_clients": ("pgbouncer_free_clients", "Client slots allocated and free."),
}


def read_target(directory: Path, name: str) -> dict:
    """The PgBouncer `name` as its file describes it; ValueError for a name that could leave the directory."""
    if not TARGET_NAME.fullmatch(name):
        raise ValueError(f"target must be a PgBouncer's name ({TARGET_NAME.pattern}), not {name!r}")
    target = json.loads((directory / f"{name}.json").read_text())
    target["password"] = Path(target.pop("password_file")).read_text().strip()
    return target


def rows(console: psycopg.Connection, command: str) -> list[dict]:
    cursor = console.execute(command)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class PgBouncerCollector:
    """One scrape of one PgBouncer: pgbouncer_up 0 when it cannot be read, and nothing else then."""

    def __init__(self, target: dict):
        self.target = target

    def collect(self):
        up = GaugeMetricFamily("pgbouncer_up", "1 when the PgBouncer's console answered this scrape.")
        try:
            families = list(self._read())
        except (psycopg.Error, OSError) as error:
            print(f"{self.target['host']}:{self.target['port']}: {error}", file=sys.stderr, flush=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self):
        t = self.target
        with psycopg.connect(
            host=t["host"], port=t["port"], user=t["user"], password=t["password"], dbname="pgbouncer",
            sslmode=t.get("sslmode", "prefer"), sslrootcert=t.get("sslrootcert") or None,
            connect_timeout=CONNECT_TIMEOUT, autocommit=True, prepare_threshold=None,
        ) as console:  # fmt: skip
            stats, pools = rows(console, "SHOW STATS"), rows(console, "SHOW POOLS")
            databases, lists = rows(console, "SHOW DATABASES"), rows(console, "SHOW LISTS")
        for column, name, text, scale in STATS:
            family = CounterMetricFamily(name, text, labels=["database"])
            for row in stats:
                family.add_metric([row["database"]], float(row[column]) * scale)
            yield family
        for column, name, text in POOLS:
            family = GaugeMetricFamily(name, text, labels=["database", "user"])
            for row in pools:
                family.add_metric([row["database"], row["user"]], float(row[column]))
            yield family
        wait = GaugeMetricFamily(
            "pgbouncer_pools_client_maxwait_seconds", "How long the oldest waiting client has waited.",
            labels=["database", "user"],
        )  # fmt: skip
        for row in pools:
            wait.add_metric([row["database"], row["user"]], row["maxwait"] + row["maxwait_us"] / 1e6)
        yield wait
        for column, name, text in DATABASES:
            family = GaugeMetricFamily(name, text, labels=["database"])
            for row in databases:
                family.add_metric([row["name"]], float(row[column] or 0))
            yield family
        counts = {row["list"]: row["items"] for row in lists}
        for key, (name, text) in LISTS.items():
            if key in counts:
                yield GaugeMetricFamily(name, text, value=float(counts[key]))


def handler(directory: Path):
    class Probe(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlparse(self.path)
            if url.path != "/probe":
                return self._answer(404, b"GET /probe?target=<pgbouncer name>\n", "text/plain")
            try:
                target = read_target(directory, parse_qs(url.query).get("target", [""])[0])
            except (ValueError, OSError, KeyError) as error:
                return self._answer(400, f"{error}\n".encode(), "text/plain")
            registry = CollectorRegistry(auto_describe=False)
            registry.register(PgBouncerCollector(target))
            encode, content_type = choose_encoder(self.headers.get("Accept") or "")
            self._answer(200, encode(registry), content_type)

        def _answer(self, status: int, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # no line per scrape
            pass

    return Probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to serve /probe on")
    parser.add_argument("--pgbouncers", required=True, type=Path, help="directory of <name>.json files")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    ThreadingHTTPServer((host.strip("[]"), int(port)), handler(args.pgbouncers)).serve_forever()


if __name__ == "__main__":
    main()
