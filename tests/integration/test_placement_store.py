"""db_placement's registry side on a scratch registry: locks, growth, dedicated servers, records."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest

from ansible_collections.saasodoo.platform.plugins.module_utils.placement import DedicatedHost, PlacementError
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_ahead import AheadOfNeed
from ansible_collections.saasodoo.platform.plugins.module_utils.placement_store import (
    NewServerSpec,
    PlacementConfig,
    PlacementRequest,
    PlacementStore,
)
from ansible_collections.saasodoo.platform.plugins.module_utils.registry_servers import retire

from .conftest import ScratchRegistry

BASIC = {"db_type": "shared", "storage_gb": 5, "odoo_version": "18.0", "db_connection_limit": 10, "odoo_workers": 2}
PREMIUM = {**BASIC, "db_type": "dedicated", "storage_gb": 100, "cpu": 4, "memory_mb": 8192}
PREMIUM_HA = {**PREMIUM, "ha": "sync"}
PG_MAJORS = {"18.0": [15]}
GROWTH = NewServerSpec(
    "pool-shared-", (56100, 56120), capacity_tenants=3, capacity_storage_gb=200, pgbouncer_port_offset=100
)
DEDICATED = NewServerSpec("pool-dedicated-", (56200, 56220), capacity_storage_gb=500)


def seed(registry: ScratchRegistry, pools: int, capacity: int = 3) -> None:
    with registry.connect() as conn:
        plans = (("basic-monthly", BASIC), ("premium-monthly", PREMIUM), ("premium-ha-monthly", PREMIUM_HA))
        for name, entitlements in plans:
            conn.execute(
                "INSERT INTO registry.plans (name, version, db_type, entitlements) VALUES (%s, 1, %s, %s)",
                (name, entitlements["db_type"], json.dumps(entitlements)),
            )
        for n in range(1, pools + 1):
            conn.execute(
                "INSERT INTO registry.db_servers (name, kind, host, port, pg_major, capacity_tenants,"
                " capacity_storage_gb) VALUES (%s, 'shared', '127.0.0.1', %s, 15, %s, 200)",
                (f"pool-shared-{n:02d}", 56000 + n, capacity),
            )


def place(registry: ScratchRegistry, tenant: str, plan: str = "basic-monthly", check_mode: bool = False, **config):
    settings = {
        "odoo_pg_majors": PG_MAJORS,
        "probe_health": False,
        "shared_growth": GROWTH,
        "dedicated": DEDICATED,
        **config,
    }
    with registry.connect() as conn:
        return PlacementStore(conn, PlacementConfig(**settings)).place(PlacementRequest(tenant, plan), check_mode)


def counts(registry: ScratchRegistry) -> dict[str, tuple[int, int, int]]:
    """Per server: the trigger's counter, the real number of tenants, the capacity."""
    with registry.connect() as conn:
        rows = conn.execute(
            "SELECT s.name, s.tenant_count, count(t.tenant_id), s.capacity_tenants FROM registry.db_servers s"
            " LEFT JOIN registry.tenants t ON t.db_server = s.name GROUP BY s.name ORDER BY s.name"
        ).fetchall()
    return {name: (counter, real, capacity) for name, counter, real, capacity in rows}


def test_twenty_parallel_placements_never_overfill(scratch_registry):
    seed(scratch_registry, pools=4)  # room for 12
    placed, refused, errors = [], [], []
    start = threading.Barrier(20)

    def worker(i: int) -> None:
        start.wait()
        try:
            placed.append(place(scratch_registry, f"tenant-{i:02d}").server["name"])
        except PlacementError as e:
            refused.append(str(e))
        except Exception as e:  # anything else is a bug: report it, don't hang the test
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (len(placed), len(refused)) == (12, 8)
    assert all("full: 3/3 tenants" in message for message in refused)
    assert counts(scratch_registry) == {f"pool-shared-{n:02d}": (3, 3, 3) for n in range(1, 5)}


def test_fill_first_fills_pools_in_order_then_grows(scratch_registry):
    seed(scratch_registry, pools=2)
    servers = [place(scratch_registry, f"t{i}", auto_grow=True).server for i in range(7)]
    assert [s["name"] for s in servers] == ["pool-shared-01"] * 3 + ["pool-shared-02"] * 3 + ["pool-shared-03"]
    grown = servers[-1]
    assert (grown["status"], grown["port"], grown["pgbouncer_port"]) == ("provisioning", 56100, 56200)
    assert counts(scratch_registry)["pool-shared-03"] == (1, 1, 3)


ON_A_HOST = replace(DEDICATED, hosts=(DedicatedHost("127.0.0.1", 16, 32768),))  # room for four premium servers


def keep_ahead(registry: ScratchRegistry, headroom: int, spares: dict | None = None, check_mode=False, **config):
    settings = {"odoo_pg_majors": PG_MAJORS, "probe_health": False, "shared_growth": GROWTH, "auto_grow": True,
                "dedicated": ON_A_HOST}  # fmt: skip
    with registry.connect() as conn:
        store = AheadOfNeed(conn, PlacementConfig(**{**settings, **config}))
        return store.keep(headroom, spares or {}, check_mode), [s["name"] for s in store.to_bring_up()]


def test_pools_grow_ahead_of_need_and_sign_ups_take_the_pools_that_are_up_first(scratch_registry):
    seed(scratch_registry, pools=1)
    for i in range(2):
        place(scratch_registry, f"t{i}")
    assert keep_ahead(scratch_registry, 1)[0].free_tenants == 1  # one slot left: the headroom is met
    place(scratch_registry, "t2")
    ahead, _ = keep_ahead(scratch_registry, 4, check_mode=True)
    assert (ahead.free_tenants, [s["name"] for s in ahead.created]) == (0, ["pool-shared-02", "pool-shared-03"])
    assert set(counts(scratch_registry)) == {"pool-shared-01"}  # check mode recorded nothing
    ahead, to_bring_up = keep_ahead(scratch_registry, 4)
    assert [(s["name"], s["status"], s["port"]) for s in ahead.created] == [
        ("pool-shared-02", "provisioning", 56100), ("pool-shared-03", "provisioning", 56101)
    ]  # fmt: skip
    assert to_bring_up == ["pool-shared-02", "pool-shared-03"]
    # the pools being brought up count: a second run records none, and names them again to be brought up
    ahead, to_bring_up = keep_ahead(scratch_registry, 4)
    assert (ahead.free_tenants, ahead.created, to_bring_up) == (6, [], ["pool-shared-02", "pool-shared-03"])
    with scratch_registry.connect() as conn:
        audited = conn.execute(
            "SELECT subject, detail->>'reason' FROM registry.audit WHERE actor = 'pool_headroom' ORDER BY id"
        ).fetchall()
        assert audited == [(f"server:pool-shared-0{n}", "0 tenant slots free, under the headroom of 4") for n in (2, 3)]
        conn.execute("UPDATE registry.db_servers SET status = 'active' WHERE name = 'pool-shared-03'")
    # fill_first takes the fuller of the pools that are up; spread the emptiest of them, not the one still coming
    assert place(scratch_registry, "t3").server["name"] == "pool-shared-03"
    assert place(scratch_registry, "t4", policy="spread").server["name"] == "pool-shared-03"


def test_no_pool_is_grown_ahead_with_growth_off_and_the_refusal_says_how_much_room_is_left(scratch_registry):
    seed(scratch_registry, pools=1)
    place(scratch_registry, "t0")
    with pytest.raises(PlacementError, match="can take 2 more tenants, under the headroom of 3, and pool growth is"):
        keep_ahead(scratch_registry, 3, auto_grow=False)
    assert keep_ahead(scratch_registry, 2, auto_grow=False)[0].created == []
    assert set(counts(scratch_registry)) == {"pool-shared-01"}


def test_a_dedicated_sign_up_takes_the_warm_spare_that_is_up_and_the_spare_is_replaced(scratch_registry):
    seed(scratch_registry, pools=1)
    ahead, to_bring_up = keep_ahead(scratch_registry, 0, {"premium-monthly": 1, "premium-ha-monthly": 1})
    assert [(s["name"], s["spare_for"], s["ha"], s["dedicated_to"]) for s in ahead.created] == [
        ("pool-dedicated-01", "premium-ha-monthly", "sync", None),
        ("pool-dedicated-02", "premium-monthly", "none", None),
    ]
    assert to_bring_up == ["pool-dedicated-01", "pool-dedicated-02"]
    # A spare still being brought up is not taken: the tenant gets a server of its own, as without spares.
    early = place(scratch_registry, "early", "premium-monthly", dedicated=ON_A_HOST)
    assert early.server["name"] == "pool-dedicated-03"
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET status = 'active' WHERE name LIKE 'pool-dedicated-0_'")
    placed = place(scratch_registry, "acme", "premium-monthly", dedicated=ON_A_HOST)
    assert (placed.server["name"], placed.server["dedicated_to"], placed.server["spare_for"]) == (
        "pool-dedicated-02", "acme", None
    )  # fmt: skip
    assert (placed.created_server, placed.placement["reason"]) == (None, "the warm spare kept for plan premium-monthly")
    # Replaced by the next run, and the other plan's spare is left; each holds 4 cores of the host's 16.
    ahead, _ = keep_ahead(scratch_registry, 0, {"premium-monthly": 1, "premium-ha-monthly": 1})
    assert [(s["name"], s["spare_for"]) for s in ahead.created] == [("pool-dedicated-04", "premium-monthly")]
    with pytest.raises(PlacementError, match="no dedicated host has 4 cores and 8192 MB left for a warm spare"):
        keep_ahead(scratch_registry, 0, {"premium-monthly": 2})  # the host is full


def test_the_headroom_counts_the_tenants_the_pools_have_storage_for(scratch_registry):
    seed(scratch_registry, pools=1)  # 3 tenants, 200 GB; basic-monthly's tenants take 5 GB each
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET storage_committed_gb = 192 WHERE name = 'pool-shared-01'")
    ahead, _ = keep_ahead(scratch_registry, 2)
    assert (ahead.free_tenants, [s["name"] for s in ahead.created]) == (1, ["pool-shared-02"])


def test_a_spare_found_unhealthy_or_unreachable_is_passed_over(scratch_registry):
    seed(scratch_registry, pools=1)
    keep_ahead(scratch_registry, 0, {"premium-monthly": 2})
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET status = 'active' WHERE kind = 'dedicated'")
        conn.execute("UPDATE registry.db_servers SET health = 'unhealthy', health_checked_at = now()"
                     " WHERE name = 'pool-dedicated-01'")  # fmt: skip
        config = PlacementConfig(odoo_pg_majors=PG_MAJORS, shared_growth=GROWTH, dedicated=ON_A_HOST)
        down = PlacementStore(conn, config, probe=lambda host, port: f"unreachable at {host}:{port}")
        placed = down.place(PlacementRequest("acme", "premium-monthly"))
        # Both spares passed over (the first found unhealthy, the second unreachable now): a server of its own
        assert (placed.server["name"], placed.created_server) == ("pool-dedicated-03", "pool-dedicated-03")
        assert conn.execute(
            "SELECT name, spare_for, health FROM registry.db_servers WHERE spare_for IS NOT NULL ORDER BY name"
        ).fetchall() == [("pool-dedicated-01", "premium-monthly", "unhealthy"),
                         ("pool-dedicated-02", "premium-monthly", "unhealthy")]  # fmt: skip
    # Spares found unhealthy are not counted as kept: released (retired once idle), and one made in their place
    ahead, _ = keep_ahead(scratch_registry, 0, {"premium-monthly": 1}, probe_health=True)
    assert (sorted(ahead.released), [s["name"] for s in ahead.created]) == (
        ["pool-dedicated-01", "pool-dedicated-02"], ["pool-dedicated-04"]
    )  # fmt: skip


def test_spares_of_a_plan_no_longer_named_or_of_another_ha_are_released(scratch_registry):
    seed(scratch_registry, pools=1)
    keep_ahead(scratch_registry, 0, {"premium-monthly": 1, "premium-ha-monthly": 1})  # 01: ha sync, 02: none
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET status = 'active' WHERE name = 'pool-dedicated-02'")
        conn.execute(
            "INSERT INTO registry.plans (name, version, db_type, entitlements) VALUES ('premium-monthly', 2,"
            " 'dedicated', %s)",
            (json.dumps({**PREMIUM, "ha": "async"}),),
        )
    ahead, to_bring_up = keep_ahead(scratch_registry, 0, {"premium-monthly": 1})  # premium-ha-monthly: dropped
    assert (sorted(ahead.released), [s["name"] for s in ahead.created]) == (
        ["pool-dedicated-01", "pool-dedicated-02"], ["pool-dedicated-03"]
    )  # fmt: skip
    with scratch_registry.connect() as conn:
        statuses = dict(
            conn.execute("SELECT name, status FROM registry.db_servers WHERE kind = 'dedicated'").fetchall()
        )
    # The one still to be brought up, which nothing had begun, is retired at once; the one up, once idle.
    assert statuses == {
        "pool-dedicated-01": "retired",
        "pool-dedicated-02": "active",
        "pool-dedicated-03": "provisioning",
    }
    assert to_bring_up == ["pool-dedicated-03"]


def test_a_spare_no_longer_wanted_is_released_and_retired_once_idle_but_a_kept_one_never(scratch_registry):
    seed(scratch_registry, pools=1)
    keep_ahead(scratch_registry, 0, {"premium-monthly": 2})
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET status = 'active' WHERE kind = 'dedicated'")
        assert "kept as a warm spare for plan premium-monthly" in retire(conn, "pool-dedicated-01", 0)
    ahead, _ = keep_ahead(scratch_registry, 0, {"premium-monthly": 1})
    assert (ahead.created, ahead.released) == ([], ["pool-dedicated-02"])
    with scratch_registry.connect() as conn:
        assert retire(conn, "pool-dedicated-02", 0) == ""
        assert "warm spare" in retire(conn, "pool-dedicated-01", 0)
    with pytest.raises(PlacementError, match="plan 'basic-monthly' is not dedicated"):
        keep_ahead(scratch_registry, 0, {"basic-monthly": 1})


def test_a_purged_tenant_is_placed_anew_and_counted_once(scratch_registry):
    seed(scratch_registry, pools=2, capacity=1)
    place(scratch_registry, "back")
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.tenants SET status = 'purged' WHERE tenant_id = 'back'")
    place(scratch_registry, "other")  # the purged tenant's slot was free: pool-shared-01 again
    again = place(scratch_registry, "back")
    assert (again.changed, again.server["name"], again.tenant["status"]) == (True, "pool-shared-02", "provisioning")
    assert counts(scratch_registry) == {"pool-shared-01": (1, 1, 1), "pool-shared-02": (1, 1, 1)}


def test_spread_takes_the_emptiest(scratch_registry):
    seed(scratch_registry, pools=3)
    names = [place(scratch_registry, f"t{i}", policy="spread").server["name"] for i in range(4)]
    assert names == ["pool-shared-01", "pool-shared-02", "pool-shared-03", "pool-shared-01"]


def test_without_growth_the_refusal_names_every_pool_and_writes_nothing(scratch_registry):
    seed(scratch_registry, pools=2, capacity=1)
    place(scratch_registry, "t1")
    place(scratch_registry, "t2")
    with pytest.raises(PlacementError) as refusal:
        place(scratch_registry, "t3")
    assert str(refusal.value).startswith(
        "no shared server can take tenant t3 (plan basic-monthly): "
        "pool-shared-01: full: 1/1 tenants; pool-shared-02: full: 1/1 tenants. Pool growth is off"
    )
    with scratch_registry.connect() as conn:
        assert conn.execute("SELECT count(*) FROM registry.tenants WHERE tenant_id = 't3'").fetchone()[0] == 0


def test_a_placed_tenant_keeps_its_server(scratch_registry):
    seed(scratch_registry, pools=2)
    first = place(scratch_registry, "acme")
    again = place(scratch_registry, "acme", policy="spread")
    assert first.changed and not again.changed
    assert again.server["name"] == first.server["name"]
    assert again.placement["id"] == first.placement["id"]


def test_check_mode_answers_without_writing(scratch_registry):
    seed(scratch_registry, pools=2)
    preview = place(scratch_registry, "acme", check_mode=True)
    assert preview.changed and preview.server["name"] == "pool-shared-01"
    with scratch_registry.connect() as conn:
        assert conn.execute("SELECT count(*) FROM registry.tenants").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM registry.placements").fetchone()[0] == 0
    assert counts(scratch_registry)["pool-shared-01"] == (0, 0, 3)


def test_the_decision_is_recorded_with_its_candidates_and_audited(scratch_registry):
    seed(scratch_registry, pools=2)
    result = place(scratch_registry, "acme")
    with scratch_registry.connect() as conn:
        candidates, chosen, reason = conn.execute(
            "SELECT candidates, chosen_server, reason FROM registry.placements WHERE tenant_id = 'acme'"
        ).fetchone()
        audit = conn.execute("SELECT kind, subject FROM registry.audit WHERE tenant_id = 'acme'").fetchall()
    assert chosen == result.server["name"] == "pool-shared-01"
    assert [c["name"] for c in candidates] == ["pool-shared-01", "pool-shared-02"]
    assert "fill_first" in reason
    assert audit == [("decision", f"placement:{result.placement['id']}")]


def test_a_dedicated_plan_gets_its_own_server_once(scratch_registry):
    seed(scratch_registry, pools=1)
    first = place(scratch_registry, "globex", plan="premium-monthly")
    second = place(scratch_registry, "initech", plan="premium-monthly")
    again = place(scratch_registry, "globex", plan="premium-monthly")
    assert first.server["kind"] == "dedicated" and first.server["dedicated_to"] == "globex"
    assert first.created_server == "pool-dedicated-01" and second.created_server == "pool-dedicated-02"
    assert (again.changed, again.server["name"]) == (False, "pool-dedicated-01")
    assert counts(scratch_registry)["pool-shared-01"][0] == 0


def test_a_dedicated_server_is_made_with_its_plans_ha_and_a_plan_of_another_ha_gets_another(scratch_registry):
    """A dedicated server's ha is its plan's, fixed when it is made: the tenant's server is its own again only for a
    plan of the same ha; a move to a plan of another ha is placed on a new server made as that plan asks."""
    seed(scratch_registry, pools=1)
    plain = place(scratch_registry, "globex", plan="premium-monthly")
    assert (plain.server["name"], plain.server["ha"]) == ("pool-dedicated-01", "none")
    ha = place(scratch_registry, "initech", plan="premium-ha-monthly")
    assert (ha.server["name"], ha.server["ha"], ha.server["dedicated_to"]) == ("pool-dedicated-02", "sync", "initech")
    config = PlacementConfig(odoo_pg_majors=PG_MAJORS, probe_health=False, shared_growth=GROWTH, dedicated=DEDICATED)
    with scratch_registry.connect() as conn, conn.transaction(force_rollback=True):
        target, placement = PlacementStore(conn, config).place_move(
            PlacementRequest("globex", "premium-ha-monthly"), "pool-dedicated-01"
        )
        assert (target["name"], target["ha"], target["_created"]) == ("pool-dedicated-03", "sync", True)
        assert placement["reason"] == "a new dedicated server for the tenant"
    with scratch_registry.connect() as conn, pytest.raises(PlacementError, match="on its own server"):
        PlacementStore(conn, config).place_move(PlacementRequest("globex", "premium-monthly"), "pool-dedicated-01")


def test_an_unreachable_pool_is_refused_and_marked_unhealthy(scratch_registry):
    seed(scratch_registry, pools=2)
    place(scratch_registry, "first")  # pool-shared-01 is now the fullest: fill_first wants it next

    def probe(host: str, port: int) -> str | None:
        return "unreachable at test" if port == 56001 else None

    with scratch_registry.connect() as conn:
        result = PlacementStore(conn, PlacementConfig(odoo_pg_majors=PG_MAJORS), probe=probe).place(
            PlacementRequest("second", "basic-monthly")
        )
        health = conn.execute("SELECT name, health FROM registry.db_servers ORDER BY name").fetchall()
    assert result.server["name"] == "pool-shared-02"
    assert health == [("pool-shared-01", "unhealthy"), ("pool-shared-02", "healthy")]
    assert any("pool-shared-01: unhealthy" in f"{c['name']}: {c['reason']}" for c in result.placement["candidates"])


@pytest.mark.parametrize(("checked_minutes_ago", "refused_unprobed"), [(2, True), (30, False)])
def test_a_recent_unhealthy_verdict_is_refused_without_a_probe_and_an_old_one_probed_again(
    scratch_registry, checked_minutes_ago, refused_unprobed
):
    """servers_probe.yml found pool-shared-01 (which fill_first wants next) unhealthy: within HEALTH_VERDICT_MINUTES
    it is refused and not probed; after, it is probed, and being up again, chosen and recorded healthy."""
    seed(scratch_registry, pools=2)
    place(scratch_registry, "first")
    with scratch_registry.connect() as conn:
        conn.execute(
            "UPDATE registry.db_servers SET health = 'unhealthy', health_detail = 'PgBouncer refused the login',"
            " health_checked_at = now() - make_interval(mins => %s) WHERE name = 'pool-shared-01'",
            (checked_minutes_ago,),
        )
    probed = []

    def probe(host: str, port: int) -> str | None:
        probed.append(port)
        return None

    with scratch_registry.connect() as conn:
        result = PlacementStore(conn, PlacementConfig(odoo_pg_majors=PG_MAJORS), probe=probe).place(
            PlacementRequest("second", "basic-monthly")
        )
        health = dict(conn.execute("SELECT name, health_detail FROM registry.db_servers").fetchall())
    if refused_unprobed:
        assert (result.server["name"], probed) == ("pool-shared-02", [56002])
        assert health["pool-shared-01"] == "PgBouncer refused the login"
    else:
        assert (result.server["name"], probed) == ("pool-shared-01", [56001])
        assert health["pool-shared-01"] is None


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("gold-monthly", "unknown plan 'gold-monthly' (known: basic-monthly, premium-ha-monthly, premium-monthly)"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(scratch_registry, plan, message):
    seed(scratch_registry, pools=1)
    with pytest.raises(PlacementError, match=message.replace("(", r"\(").replace(")", r"\)")):
        place(scratch_registry, "acme", plan=plan)
    with scratch_registry.connect() as conn:
        assert conn.execute("SELECT count(*) FROM registry.tenants").fetchone()[0] == 0


def test_a_move_holds_its_place_on_the_target_until_it_is_repointed_or_ends(scratch_registry):
    """Two tenants moved off a pool at once, one free place elsewhere: the second move is refused. Switched, the
    move keeps the tenant's place on the source until it is verified."""
    seed(scratch_registry, pools=2, capacity=2)
    for tenant in ("a", "b", "c"):  # fill-first: a and b on pool-shared-01, c on pool-shared-02
        place(scratch_registry, tenant)
    config = PlacementConfig(odoo_pg_majors=PG_MAJORS, probe_health=False, shared_growth=GROWTH, dedicated=DEDICATED)

    def place_move(tenant: str) -> int:
        with scratch_registry.connect() as conn, conn.transaction():
            target, _ = PlacementStore(conn, config).place_move(
                PlacementRequest(tenant, "basic-monthly"), "pool-shared-01"
            )
            return conn.execute(  # as db_migrate records a placed move, in the placement's transaction
                "INSERT INTO registry.migrations (tenant_id, source_server, target_server, method, phase, plan_name)"
                " VALUES (%s, 'pool-shared-01', %s, 'logical', 'placed', 'basic-monthly') RETURNING id",
                (tenant, target["name"]),
            ).fetchone()[0]

    first = place_move("a")
    assert counts(scratch_registry)["pool-shared-02"] == (2, 1, 2)  # c, and a's move
    with pytest.raises(PlacementError, match="pool-shared-02: full: 2/2 tenants"):
        place_move("b")
    with scratch_registry.connect() as conn:
        storage = conn.execute("SELECT storage_committed_gb FROM registry.db_servers WHERE name = 'pool-shared-02'")
        assert storage.fetchone()[0] == 2 * BASIC["storage_gb"]
        # Repointed: the tenant itself counts there now, the move no longer does.
        with conn.transaction():
            conn.execute("UPDATE registry.tenants SET db_server = 'pool-shared-02' WHERE tenant_id = 'a'")
            conn.execute("UPDATE registry.migrations SET phase = 'repointed' WHERE id = %s", (first,))
    assert counts(scratch_registry)["pool-shared-02"] == (2, 2, 2)
    # Until it is verified, a logical move keeps the tenant's place on its source, where a switch back brings it.
    assert counts(scratch_registry)["pool-shared-01"] == (2, 1, 2)
    # Switched back and rolled back: its place is free again.
    with scratch_registry.connect() as conn, conn.transaction():
        conn.execute("UPDATE registry.tenants SET db_server = 'pool-shared-01' WHERE tenant_id = 'a'")
        conn.execute(
            "UPDATE registry.migrations SET phase = 'rolled_back', finished_at = now() WHERE id = %s", (first,)
        )
    assert counts(scratch_registry)["pool-shared-02"] == (1, 1, 2)
    assert counts(scratch_registry)["pool-shared-01"] == (2, 2, 2)
    second = place_move("b")
    with scratch_registry.connect() as conn:
        conn.execute(
            "UPDATE registry.migrations SET phase = 'rolled_back', finished_at = now() WHERE id = %s", (second,)
        )
    assert counts(scratch_registry)["pool-shared-02"] == (1, 1, 2)


def test_ports_are_taken_per_host(scratch_registry):
    """Servers on machines of their own all listen on 5432: a new server's port is free unless its host uses it."""
    seed(scratch_registry, pools=1)
    with scratch_registry.connect() as conn:
        conn.execute(
            "INSERT INTO registry.db_servers (name, kind, host, port, pgbouncer_host, pgbouncer_port, pg_major,"
            " capacity_tenants, capacity_storage_gb) VALUES ('pool-shared-09', 'shared', '10.0.0.9', 5432,"
            " '10.0.0.9', 6432, 15, 3, 200)"
        )
    own_host = NewServerSpec("pool-dedicated-", (5432, 5432), host="10.0.0.20", capacity_storage_gb=500)
    first = place(scratch_registry, "globex", plan="premium-monthly", dedicated=own_host)
    assert (first.server["host"], first.server["port"]) == ("10.0.0.20", 5432)
    with pytest.raises(PlacementError, match="no free port left in 5432-5432"):
        place(scratch_registry, "initech", plan="premium-monthly", dedicated=own_host)
    same_host_as_pool = NewServerSpec("pool-dedicated-", (5432, 5433), host="10.0.0.9", capacity_storage_gb=500)
    assert place(scratch_registry, "hooli", plan="premium-monthly", dedicated=same_host_as_pool).server["port"] == 5433


def test_dedicated_servers_hold_their_plans_share_of_a_host_and_a_full_set_is_refused(scratch_registry):
    """Each new dedicated server goes on a dedicated host with the plan's cpu and memory_mb left (fill_first: the one
    with the least left that fits) and holds that share until it is retired; with none left, placement names every
    host and what holds it, and writes nothing."""
    seed(scratch_registry, pools=1)
    hosted = replace(DEDICATED, hosts=(DedicatedHost("10.0.0.1", 4, 8192), DedicatedHost("10.0.0.2", 8, 12288)))
    placed = [place(scratch_registry, f"big-{n}", "premium-monthly", dedicated=hosted).server for n in range(2)]
    assert [(s["name"], s["host"]) for s in placed] == [
        ("pool-dedicated-01", "10.0.0.1"),
        ("pool-dedicated-02", "10.0.0.2"),
    ]
    with scratch_registry.connect() as conn:
        reason, candidates = conn.execute(
            "SELECT reason, candidates FROM registry.placements WHERE tenant_id = 'big-0'"
        ).fetchone()
        held = conn.execute(
            "SELECT reserved_cpu, reserved_memory_mb FROM registry.db_servers WHERE name = 'pool-dedicated-01'"
        ).fetchone()
    assert "on 10.0.0.1" in reason and [c["name"] for c in candidates] == ["10.0.0.1", "10.0.0.2"]
    assert held == (4, 8192)

    # 10.0.0.2 has 4 cores left but 4096 MB: memory refuses it, as CPU refuses 10.0.0.1.
    with pytest.raises(PlacementError) as refused:
        place(scratch_registry, "big-2", "premium-monthly", dedicated=hosted)
    message = str(refused.value)
    assert "no dedicated host has 4 cores and 8192 MB left for tenant big-2" in message
    assert "10.0.0.1: CPU: 4 of 4 cores reserved (held by pool-dedicated-01), 4 needed" in message
    assert "10.0.0.2: memory: 8192 of 12288 MB reserved (held by pool-dedicated-02), 8192 needed" in message
    assert "servers_retire.yml" in message
    with scratch_registry.connect() as conn:
        assert conn.execute("SELECT count(*) FROM registry.db_servers WHERE kind = 'dedicated'").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM registry.tenants WHERE tenant_id = 'big-2'").fetchone() == (0,)

    # The tenant's own server is its own again without a share of its own; a retired server frees its share.
    assert place(scratch_registry, "big-0", "premium-monthly", dedicated=hosted).changed is False
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET status = 'retired' WHERE name = 'pool-dedicated-01'")
    again = place(scratch_registry, "big-2", "premium-monthly", dedicated=hosted).server
    assert (again["name"], again["host"]) == ("pool-dedicated-03", "10.0.0.1")


def test_a_dedicated_host_without_a_free_port_or_with_a_server_of_unknown_share_takes_no_new_server(scratch_registry):
    """One port per host (production's one cluster per machine): a host with room but its port taken is refused, and
    so is a host holding a dedicated server made before shares were recorded (it holds the whole host)."""
    seed(scratch_registry, pools=1)
    with scratch_registry.connect() as conn:
        conn.execute(
            "INSERT INTO registry.db_servers (name, kind, host, port, pg_major, capacity_tenants, capacity_storage_gb)"
            " VALUES ('pool-dedicated-legacy', 'dedicated', '10.0.0.3', 5432, 15, 1, 500)"
        )
    hosts = (
        DedicatedHost("10.0.0.1", 16, 65536),
        DedicatedHost("10.0.0.2", 4, 8192),
        DedicatedHost("10.0.0.3", 16, 65536),
    )
    one_port = replace(DEDICATED, port_range=(5432, 5432), hosts=hosts)
    first = place(scratch_registry, "solo-0", "premium-monthly", dedicated=one_port).server
    second = place(scratch_registry, "solo-1", "premium-monthly", dedicated=one_port).server
    assert [(s["host"], s["port"]) for s in (first, second)] == [("10.0.0.2", 5432), ("10.0.0.1", 5432)]
    with pytest.raises(PlacementError) as refused:
        place(scratch_registry, "solo-2", "premium-monthly", dedicated=one_port)
    message = str(refused.value)
    assert "10.0.0.1: no free port left in 5432-5432" in message
    assert "10.0.0.3: no free port left in 5432-5432" in message  # the legacy server's port
    with scratch_registry.connect() as conn:
        conn.execute("UPDATE registry.db_servers SET port = 5433 WHERE name = 'pool-dedicated-legacy'")
    with pytest.raises(PlacementError) as refused:
        place(scratch_registry, "solo-2", "premium-monthly", dedicated=one_port)
    assert (
        "10.0.0.3: CPU: 16 of 16 cores reserved (held by pool-dedicated-legacy (all of it: no share recorded)),"
        " 4 needed" in str(refused.value)
    )


def test_a_dedicated_plan_without_cpu_and_memory_is_refused_where_hosts_are_shared(scratch_registry):
    seed(scratch_registry, pools=1)
    with scratch_registry.connect() as conn:
        conn.execute(
            "INSERT INTO registry.plans (name, version, db_type, entitlements) VALUES ('bare-dedicated', 1,"
            " 'dedicated', %s)",
            (json.dumps({k: v for k, v in PREMIUM.items() if k not in ("cpu", "memory_mb")}),),
        )
    hosted = replace(DEDICATED, hosts=(DedicatedHost("10.0.0.1", 4, 8192),))
    with pytest.raises(PlacementError, match="sets no cpu and memory_mb, which a dedicated server reserves"):
        place(scratch_registry, "bare", "bare-dedicated", dedicated=hosted)
    assert place(scratch_registry, "bare", "bare-dedicated").server["host"] == "127.0.0.1"  # no hosts: no share
