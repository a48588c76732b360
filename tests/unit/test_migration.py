"""db_migrate's pure parts: which post-data entries the logical copy restores before the data, and how a switch
reuses its admin sessions."""

from __future__ import annotations

from pathlib import Path

import psycopg
import yaml

from ansible_collections.saasodoo.platform.plugins.module_utils import pgbouncer_console
from ansible_collections.saasodoo.platform.plugins.module_utils.move_copy import split_post_data
from ansible_collections.saasodoo.platform.plugins.module_utils.move_servers import Server
from ansible_collections.saasodoo.platform.plugins.module_utils.pinned_session import PINNED_SESSION

# The shape of `pg_restore -l --section=post-data` on an Odoo-shaped dump (PostgreSQL 15).
LISTING = """;
; Archive created at 2026-11-21 22:30:35 UTC
;     dbname: t_mover
;
; Selected TOC Entries:
;
4012; 2606 16640 CONSTRAINT public account_move_line account_move_line_pkey t_mover
4020; 2606 16700 CONSTRAINT public account_move_line_account_tax_rel account_move_line_account_tax_rel_pkey t_mover
4031; 2606 16720 CONSTRAINT public res_partner res_partner_ref_key t_mover
4100; 1259 16801 INDEX public account_move_line_date_idx t_mover
4101; 1259 16802 INDEX public account_move_line_partner_id_idx t_mover
4200; 2606 16900 FK CONSTRAINT public account_move_line account_move_line_partner_id_fkey t_mover
4300; 2620 17000 TRIGGER public res_partner res_partner_touch t_mover
"""


def test_keys_go_before_the_data_and_the_rest_after():
    keys, rest = split_post_data(LISTING)
    assert [line.split()[-2] for line in keys] == [
        "account_move_line_pkey",
        "account_move_line_account_tax_rel_pkey",
        "res_partner_ref_key",
    ]
    # Foreign keys ("FK CONSTRAINT") wait for the data like the indexes: the copy is not in FK order.
    assert [line.split()[3] for line in rest] == ["INDEX", "INDEX", "FK", "TRIGGER"]


def test_comments_and_blank_lines_are_not_entries():
    assert split_post_data(";\n\n; nothing selected\n") == ([], [])


def test_every_privileged_session_in_a_tenant_database_pins_the_same_settings():
    """db_migrate and tenant_database (the modules), roles/odoo_template and the backup/restore playbooks pin one
    set of startup options."""
    root = Path(__file__).resolve().parents[2]
    role = yaml.safe_load((root / "roles/odoo_template/vars/main.yml").read_text())
    playbooks = yaml.safe_load((root / "playbooks/vars/tenant.yml").read_text())
    assert role["__odoo_template_pinned_session"]["options"] == PINNED_SESSION
    assert playbooks["saasodoo_pinned_session_options"] == PINNED_SESSION
    settings = dict(option.split("=", 1) for option in PINNED_SESSION.removeprefix("-c ").split(" -c "))
    assert settings["role"] == "none" and settings["search_path"] == "pg_catalog,pg_temp"
    assert settings["restrict_nonsystem_relation_kind"] == "view,foreign-table"


class FakeSession:
    """What Server.connect() needs of a psycopg connection: closing, a server version and execute."""

    def __init__(self, dbname: str):
        self.dbname, self.closed, self.executed = dbname, False, []
        self.info = type("Info", (), {"server_version": 150000})()

    def execute(self, query: str):
        self.executed.append(query)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sessions_server(opened: list) -> Server:
    server = Server("pool-shared-01", "127.0.0.1", 55432, {})

    def open_session(dbname: str) -> FakeSession:
        opened.append(FakeSession(dbname))
        return opened[-1]

    server._open = open_session
    return server


def test_a_switch_keeps_one_session_per_database_and_closes_them_at_its_end():
    opened: list[FakeSession] = []
    server = sessions_server(opened)
    with server.keeping():
        with server.connect("t_a") as first:
            pass
        with server.connect("t_a") as again, server.connect() as postgres:
            assert again is first and not first.closed  # `with` left it open for the next step
            assert postgres is not first
        with server.connect("t_a", fresh=True) as snapshot:
            assert snapshot is not first  # a snapshot's transaction is its own
        assert snapshot.closed
        # The tenant's database may set an idle timeout: a kept session, idle between steps, turns it off.
        assert first.executed == ["SET idle_session_timeout = 0"]
    assert [session.dbname for session in opened] == ["t_a", "postgres", "t_a"]
    assert all(session.closed for session in opened)


def test_outside_a_switch_each_connect_is_a_new_session():
    opened: list[FakeSession] = []
    server = sessions_server(opened)
    with server.connect("t_a") as one:
        pass
    with server.connect("t_a") as two:
        pass
    assert one is not two and one.closed and two.closed and two.executed == []


class FakeConsole(FakeSession):
    """PgBouncer's console as psycopg reaches it: it knows the databases in `known`."""

    def __init__(self, known: set[str]):
        super().__init__("pgbouncer")
        self.known = known
        self.connection = None  # as a quoting context: the default encoding

    def execute(self, query: str):
        self.executed.append(query)
        if query.split(" ", 1)[1] not in self.known:
            raise psycopg.errors.ProtocolViolation("no such database: …")


def test_the_pgbouncer_console_gets_the_commands_in_order_on_the_quoted_name_and_stops_at_an_unknown_one(
    monkeypatch,
):
    consoles: list[FakeConsole] = []

    def connect(**kwargs):
        assert kwargs["dbname"] == "pgbouncer" and kwargs["user"] == "saasodoo_pgbouncer_admin"
        consoles.append(FakeConsole({'"t_a"', '"t_b""; SHUTDOWN; --"'}))
        return consoles[-1]

    monkeypatch.setattr(pgbouncer_console.psycopg, "connect", connect)
    server = Server("pool-shared-01", "127.0.0.1", 55432, {"pgbouncer_admin_password": "p"}, None, 56432)
    server.close_pgbouncer_door("t_a")
    # A name the tenant chose is one identifier, never a second command.
    server.close_pgbouncer_door('t_b"; SHUTDOWN; --')
    server.open_pgbouncer_door("t_c")  # PgBouncer has not seen it: nothing to enable
    assert [console.executed for console in consoles] == [
        ['DISABLE "t_a"', 'KILL "t_a"', 'RESUME "t_a"'],
        [f"{command} {chr(34)}t_b{chr(34) * 2}; SHUTDOWN; --{chr(34)}" for command in ("DISABLE", "KILL", "RESUME")],
        ['ENABLE "t_c"'],
    ]
    assert all(console.closed for console in consoles)
    # Without a PgBouncer admin login (a server with no PgBouncer of its own) there is no console to reach.
    Server("pool-shared-02", "127.0.0.1", 55433, {}, None, 56433).close_pgbouncer_door("t_a")
    assert len(consoles) == 3
