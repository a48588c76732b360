"""The runner's HTTP side, served by gunicorn: Kill Bill's callback, health, metrics and the admin API.

Kill Bill can neither sign nor add headers (killbill/killbill PushNotificationListener.java, issue #2227), so
the callback URL holds a secret token: POST /killbill/<token>. A notification is stored in the registry inbox
before the answer (2xx well inside Kill Bill's 15 s); bad input gets a clear 4xx and nothing is stored.
Playbooks never run here: the workers take the inbox. gunicorn runs without an access log, because the
request line holds the token.
"""

from __future__ import annotations

import datetime
import hmac
import logging

import psycopg
from flask import Flask, Response, abort, jsonify, request
from flask.json.provider import DefaultJSONProvider
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.exceptions import HTTPException

from . import logs, store
from .config import RunnerSettings, load_settings, tenant_login_url
from .metrics import JOB_STATES, exposition, exposition_registry
from .notification import InvalidNotification, parse_notification

log = logging.getLogger("webhook_runner.app")


class IsoJSONProvider(DefaultJSONProvider):
    """Times as ISO 8601 (Flask's default is the HTTP date format, without sub-seconds)."""

    @staticmethod
    def default(o):
        if isinstance(o, datetime.datetime | datetime.date):
            return o.isoformat()
        return DefaultJSONProvider.default(o)


def create_app(settings: RunnerSettings | None = None) -> Flask:
    settings = settings or load_settings()
    logs.configure()  # gunicorn configures only its own loggers
    app = Flask("webhook_runner")
    app.json = IsoJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    pool = ConnectionPool(
        settings.registry_conninfo,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True, "row_factory": dict_row, "application_name": "saasodoo-runner-web"},
        check=ConnectionPool.check_connection,  # a registry restart costs one failed check, not a 5xx
        open=False,
    )
    app.extensions["registry_pool"] = pool

    def registry():
        if pool.closed:
            pool.open()
        return pool.connection(timeout=5)

    @app.errorhandler(HTTPException)
    def http_error(error):
        return jsonify(error=error.description), error.code

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(PoolTimeout)
    def registry_down(error):
        log.error("registry unreachable: %s", error)
        return jsonify(error="the registry is unreachable; nothing was stored, retry later"), 503

    def require_token(expected: str, name: str):
        supplied = request.headers.get("Authorization", "")
        scheme, _, token = supplied.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
            response = jsonify(error=f"this call needs the {name} token: Authorization: Bearer <token>")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = 'Bearer realm="saasodoo-runner"'
            abort(response)

    def require_admin():
        require_token(settings.admin_token, "admin")

    scheduled = [name for name, seconds in settings.schedules.items() if seconds]  # the schedules turned on
    metrics_registry = exposition_registry(registry, limited=tuple(settings.job_limits), scheduled=scheduled)

    @app.post("/killbill/<token>")
    def killbill_notification(token: str):
        if not hmac.compare_digest(token.encode(), settings.inbound_token.encode()):
            abort(401, "unknown callback token")
        if request.mimetype != "application/json":
            abort(415, "Content-Type must be application/json")
        body = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
        try:
            notification = parse_notification(body)
        except InvalidNotification as error:
            abort(400, str(error))
        with registry() as conn:
            try:
                event_id = store.insert_event(
                    conn, body.decode(), notification.event_type, notification.object_type,
                    notification.object_id, notification.account_id,
                )  # fmt: skip
            except psycopg.DataError as error:  # e.g. a \u0000 that jsonb refuses
                abort(400, f"the body cannot be stored: {error.diag.message_primary}")
        log.info(
            "event %s stored: %s %s", event_id, notification.event_type, notification.action_type or "",
            extra={"event": event_id, "account": notification.account_id},
        )  # fmt: skip
        return jsonify(event_id=event_id), 202

    @app.post("/killbill")
    @app.post("/killbill/")
    def killbill_without_token():
        abort(401, "the callback URL must end with the runner's token: /killbill/<token>")

    @app.get("/healthz")
    def healthz():
        with registry() as conn:
            conn.execute("SELECT 1")
        return jsonify(status="ok", registry="ok")

    @app.get("/metrics")
    def metrics():
        require_token(settings.metrics_token, "metrics")
        body, content_type = exposition(metrics_registry, request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    # Prometheus' HTTP service discovery (roles/monitoring): every active tenant's login page, by its public URL.
    @app.get("/sd/tenants")
    def tenant_targets():
        require_token(settings.metrics_token, "metrics")
        if not settings.tenant_url:
            abort(404, "the runner's settings give no tenant_url: it cannot name the tenants' login pages")
        with registry() as conn:
            tenants = store.active_tenants(conn)
        return jsonify([
            {"targets": [tenant_login_url(settings.tenant_url, tenant)], "labels": {"tenant": tenant}}
            for tenant in tenants
        ])  # fmt: skip

    @app.get("/jobs")
    def jobs():
        require_admin()
        state = request.args.get("state")
        if state is not None and state not in JOB_STATES:
            abort(400, f"state must be one of {', '.join(JOB_STATES)}")
        try:
            limit = min(int(request.args.get("limit", 100)), 1000)
        except ValueError:
            abort(400, "limit must be a number")
        with registry() as conn:
            rows = store.list_jobs(conn, state=state, tenant_id=request.args.get("tenant"), limit=limit)
        return jsonify(jobs=rows)

    def found(read, key, missing: str):
        """What `read(conn, key)` finds in the registry, as JSON; 404 saying `missing` when it finds nothing."""
        with registry() as conn:
            row = read(conn, key)
        if row is None:
            abort(404, missing)
        return jsonify(row)

    def answered(act):
        """What `act(conn)` did in the registry, (row, HTTP status, refusal): the row as JSON with that status, or
        the refusal with it."""
        with registry() as conn:
            row, status, refusal = act(conn)
        if row is None:
            abort(status, refusal)
        return jsonify(row), status

    @app.get("/jobs/<int:job_id>")
    def job(job_id: int):
        require_admin()
        return found(store.get_job, job_id, f"no job {job_id}")

    @app.post("/jobs/<int:job_id>/replay")
    def replay(job_id: int):
        require_admin()
        with registry() as conn:
            row = store.replay_job(conn, job_id)
            if row is None:
                existing = store.get_job(conn, job_id)
                if existing is None:
                    abort(404, f"no job {job_id}")
                if existing["account_id"] is None and existing["state"] == "failed":
                    abort(409, f"job {job_id} is a periodic pass's ({existing['action']}): the next pass runs it again")
                abort(409, f"job {job_id} is {existing['state']}: only a parked or failed job can be replayed")
            store.record_audit(
                conn, actor="webhook_runner admin", tenant_id=row["tenant_id"], kind="replay",
                subject=f"job:{job_id}", detail={"action": row["action"]},
            )  # fmt: skip
            conn.execute(f"NOTIFY {store.NOTIFY_CHANNEL}")
        return jsonify(row), 202

    @app.get("/schedules")
    def schedules():
        require_admin()
        with registry() as conn:
            rows = store.schedules_view(conn, scheduled)
        return jsonify(schedules=rows)

    @app.post("/tenants/<tenant_id>/odoo")
    def tenant_odoo(tenant_id: str):
        """Restart (the default), stop or start the tenant's Odoo: a job in its account (tenant_restart.yml)."""
        require_admin()
        body = request.get_json(force=True, silent=True) if request.get_data() else {}
        odoo = body.get("state", "restarted") if isinstance(body, dict) else None
        if odoo not in store.ODOO_STATES:
            abort(400, f'the body is {{"state": one of {", ".join(store.ODOO_STATES)}}} (default restarted)')
        return answered(lambda conn: store.queue_odoo_job(conn, tenant_id, odoo))

    # The rollout of the platform's Odoo build (the inventory's saasodoo_odoo_build) to every tenant: store/updates.py.
    @app.get("/odoo-update")
    def odoo_update():
        require_admin()
        return found(lambda conn, _: store.update_view(conn), None, "no update yet: POST /odoo-update starts one")

    @app.post("/odoo-update")
    def odoo_update_start():
        """Start a rollout: {"canary": tenants first (default 2), "batch": tenants at a time after (default 10)}."""
        require_admin()
        body = request.get_json(force=True, silent=True) if request.get_data() else {}
        sizes = {key: body.get(key, default) for key, default in (("canary", 2), ("batch", 10))} if isinstance(
            body, dict) else {}  # fmt: skip
        if not sizes or any(type(n) is not int or not 1 <= n <= 1000 for n in sizes.values()):
            abort(400, 'the body is {"canary": 1 to 1000 (default 2), "batch": 1 to 1000 (default 10)}')
        return answered(lambda conn: store.start_update(conn, sizes["canary"], sizes["batch"]))

    @app.post("/odoo-update/<any(pause, resume):step>")
    def odoo_update_step(step: str):
        require_admin()
        return answered(lambda conn: store.set_update_state(conn, "paused" if step == "pause" else "running"))

    @app.get("/tenants/<tenant_id>")
    def tenant(tenant_id: str):
        require_admin()
        return found(store.tenant_view, tenant_id, f"no tenant {tenant_id}")

    return app
