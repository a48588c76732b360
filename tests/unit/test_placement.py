"""The placement decision, without a database: tables of servers in, verdicts and choice out."""

from __future__ import annotations

import pytest

from ansible_collections.saasodoo.platform.plugins.filter.tenants import tenant_os_user
from ansible_collections.saasodoo.platform.plugins.module_utils.placement import (
    DedicatedHost,
    Needs,
    PlacementError,
    Server,
    choose_dedicated_host,
    choose_shared,
    database_name,
    db_type_of,
    evaluate,
    free_slots,
    kept_copy_name,
    next_server,
    refusal_message,
    server_ha,
)

NEEDS = Needs(storage_gb=5, pg_majors=(15, 16))


def server(name: str, tenants: int = 0, capacity: int = 3, **overrides) -> Server:
    fields = dict(
        name=name,
        kind="shared",
        status="active",
        health="healthy",
        pg_major=15,
        capacity_tenants=capacity,
        tenant_count=tenants,
        capacity_storage_gb=100,
        storage_committed_gb=tenants * 5,
    )
    return Server(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "accepted", "reason"),
    [
        ({}, True, "fits"),
        ({"status": "provisioning"}, True, "fits"),
        ({"kind": "dedicated"}, False, "kind dedicated"),
        ({"status": "draining"}, False, "status draining"),
        ({"status": "retired"}, False, "status retired"),
        ({"health": "unhealthy"}, False, "unhealthy"),
        ({"pg_major": 12}, False, "PostgreSQL 12 not supported by the plan's Odoo (needs 15, 16)"),
        ({"tenant_count": 3}, False, "full: 3/3 tenants"),
        ({"storage_committed_gb": 96}, False, "storage: 96 + 5 GB > 100 GB"),
        ({"storage_committed_gb": 95}, True, "fits"),
    ],
)
def test_evaluate_gives_each_verdict_its_reason(overrides, accepted, reason):
    candidate = evaluate(server("pool-a", **overrides), NEEDS)
    assert (candidate.accepted, candidate.reason) == (accepted, reason)


@pytest.mark.parametrize(
    ("servers", "policy", "chosen"),
    [
        # fill_first: the fullest that fits
        ([server("a", 0), server("b", 2), server("c", 1)], "fill_first", "b"),
        # spread: the emptiest
        ([server("a", 2), server("b", 0), server("c", 1)], "spread", "b"),
        # a full server is skipped, whatever the policy
        ([server("a", 3), server("b", 1)], "fill_first", "b"),
        # ties go by name, in both policies
        ([server("b", 1), server("a", 1)], "fill_first", "a"),
        ([server("b", 1), server("a", 1)], "spread", "a"),
        # free slots decide, not tenant counts: a bigger server with more tenants can be emptier
        ([server("a", 2, capacity=3), server("b", 3, capacity=10)], "spread", "b"),
        ([server("a", 2, capacity=3), server("b", 3, capacity=10)], "fill_first", "a"),
        # a pool up before one still being brought up (grown ahead of need), whatever the policy
        ([server("a", 0, status="provisioning"), server("b", 2)], "spread", "b"),
        ([server("a", 2, status="provisioning"), server("b", 0)], "fill_first", "b"),
        ([server("a", 0, status="provisioning"), server("b", 3)], "fill_first", "a"),
        # nothing fits
        ([server("a", 3), server("b", 3)], "fill_first", None),
        ([], "fill_first", None),
    ],
)
def test_choose_shared_follows_the_policy(servers, policy, chosen):
    assert choose_shared(servers, NEEDS, policy).chosen == chosen


def test_free_slots_count_what_the_pools_of_the_growths_major_can_still_take():
    servers = [
        server("up", 1),  # 2
        server("coming", 0, status="provisioning"),  # 3
        server("full", 3),
        server("sick", 0, health="unhealthy"),
        server("draining", 0, status="draining"),
        server("older", 0, pg_major=14),
        server("no-storage", 0, storage_committed_gb=100),
        server("mine", 0, kind="dedicated"),
    ]
    assert free_slots(servers, 15, storage_gb=5) == 5
    assert free_slots(servers, 14, storage_gb=5) == 3
    assert free_slots(servers, 15) == 8  # tenants that take no storage fit where none is left
    assert free_slots([server("tight", 0, storage_committed_gb=90)], 15, storage_gb=5) == 2  # 10 GB: two of 5
    assert free_slots([], 15) == 0


def test_same_inputs_same_answer_whatever_the_order():
    servers = [server(n, t) for n, t in [("c", 1), ("a", 1), ("b", 2), ("d", 0)]]
    answers = {choose_shared(list(order), NEEDS, "fill_first").chosen for order in (servers, servers[::-1])}
    assert answers == {"b"}


def test_decision_lists_every_candidate_with_its_verdict():
    decision = choose_shared([server("b", 3), server("a", 1, pg_major=11)], NEEDS, "fill_first")
    assert decision.chosen is None
    assert [(c.name, c.accepted, c.reason) for c in decision.candidates] == [
        ("a", False, "PostgreSQL 11 not supported by the plan's Odoo (needs 15, 16)"),
        ("b", False, "full: 3/3 tenants"),
    ]


def test_refusal_message_names_every_candidate_and_the_remedy():
    decision = choose_shared([server("pool-shared-01", 3), server("pool-shared-02", 3)], NEEDS, "fill_first")
    message = refusal_message("acme", "basic-monthly", decision, "Add a pool.")
    assert message == (
        "no shared server can take tenant acme (plan basic-monthly): pool-shared-01: full: 3/3 tenants; "
        "pool-shared-02: full: 3/3 tenants. Add a pool."
    )


def test_unknown_policy_is_refused():
    with pytest.raises(PlacementError, match="policy 'biggest' is unknown"):
        choose_shared([server("a")], NEEDS, "biggest")


@pytest.mark.parametrize(
    ("entitlements", "expected"),
    [({"db_type": "shared"}, "shared"), ({"db_type": "dedicated"}, "dedicated")],
)
def test_db_type_comes_from_the_entitlements(entitlements, expected):
    # The name says premium, the entitlements say shared: the entitlements win.
    assert db_type_of("premium-monthly", entitlements) == expected


@pytest.mark.parametrize("entitlements", [{}, {"db_type": None}, {"db_type": "Shared"}, {"db_type": "cluster"}])
def test_a_plan_without_a_valid_db_type_is_refused_with_its_name(entitlements):
    with pytest.raises(PlacementError, match="plan 'odd-plan' has db_type"):
        db_type_of("odd-plan", entitlements)


@pytest.mark.parametrize(
    ("entitlements", "expected"),
    [({"db_type": "dedicated"}, "none"), ({"db_type": "dedicated", "ha": "sync"}, "sync"), ({"ha": "async"}, "async")],
)
def test_a_new_dedicated_servers_ha_comes_from_the_plan(entitlements, expected):
    assert server_ha("premium-ha-monthly", entitlements) == expected


@pytest.mark.parametrize("ha", [None, "yes", "SYNC", True])
def test_a_plan_with_an_unknown_ha_is_refused_with_its_name(ha):
    with pytest.raises(PlacementError, match="plan 'odd-plan' has ha"):
        server_ha("odd-plan", {"db_type": "dedicated", "ha": ha})


@pytest.mark.parametrize(
    ("tenant_id", "name"),
    [
        ("acme", "t_acme"),
        ("Acme-Corp_2", "t_acme_corp_2"),
        ("0a1b2c3d-4e5f", "t_0a1b2c3d_4e5f"),
        ("x" * 48, "t_" + "x" * 48),
    ],
)
def test_database_name_is_a_safe_identifier(tenant_id, name):
    assert database_name(tenant_id) == name
    assert len(name) <= 63


@pytest.mark.parametrize(
    "tenant_id", ["", "-acme", "acme corp", "acme;drop", "x" * 49, "ünïcode", "acme__restore", "Acme--PreRestore"]
)
def test_bad_tenant_ids_are_refused(tenant_id):
    with pytest.raises(PlacementError, match="tenant_id"):
        database_name(tenant_id)


# Every name the platform gives a database of its own beside tenant acme's, as the code that makes it does.
PLATFORM_DATABASE_NAMES = [kept_copy_name("t_acme", 7), kept_copy_name("t_" + "a" * 48, 12), "t_acme__restore",
                           "t_acme__prerestore",
                           # the database of an id spelling a long id's OS user (odoo_<key[:18]>_<hash8>), and of
                           # ids naming a Kubernetes tenant's database Service and Secrets (odoo-acme-db, ...)
                           "t_" + tenant_os_user("acme-corporation-production-eu").removeprefix("odoo_"),
                           "t_acme_db", "t_acme_cephfs", "t_acme_tls"]  # fmt: skip


@pytest.mark.parametrize("platform_name", PLATFORM_DATABASE_NAMES)
@pytest.mark.parametrize("spelling", [str, str.upper, lambda id_: id_.replace("_", "-")])
def test_no_tenant_id_names_a_database_the_platform_makes_for_itself(platform_name, spelling):
    tenant_id = spelling(platform_name.removeprefix("t_"))
    if len(tenant_id) > 48:  # a long database's kept copy: the id of that length is refused as too long already
        tenant_id = tenant_id[-48:]
    with pytest.raises(PlacementError, match=r"tenant_id .* not valid: .* the name the platform gives"):
        database_name(tenant_id)


def test_names_near_the_platforms_stay_allowed():
    assert [database_name(t) for t in ("bold1", "old7", "acme_older", "acme_old", "acme-dbs", "db", "tls-acme")] == [
        "t_bold1", "t_old7", "t_acme_older", "t_acme_old", "t_acme_dbs", "t_db", "t_tls_acme"]  # fmt: skip


@pytest.mark.parametrize(
    ("names", "ports", "expected"),
    [
        (set(), set(), ("pool-shared-01", 55440)),
        ({"pool-shared-01", "pool-shared-02"}, {55440}, ("pool-shared-03", 55441)),
        ({"pool-shared-02"}, {55441}, ("pool-shared-01", 55440)),
    ],
)
def test_next_server_takes_the_first_free_name_and_port(names, ports, expected):
    assert next_server("pool-shared-", (55440, 55442), names, ports) == expected


def test_next_server_fails_when_the_port_range_is_used_up():
    with pytest.raises(PlacementError, match="no free port left in 55440-55441"):
        next_server("pool-shared-", (55440, 55441), set(), {55440, 55441})


HOSTS = [DedicatedHost("10.0.0.2", 16, 65536), DedicatedHost("10.0.0.1", 16, 65536), DedicatedHost("10.0.0.3", 4, 4096)]
RESERVED = {"10.0.0.2": (8, 16384, "pool-dedicated-01, pool-dedicated-02")}


@pytest.mark.parametrize(("policy", "chosen"), [("fill_first", "10.0.0.2"), ("spread", "10.0.0.1")])
def test_a_dedicated_server_goes_on_the_fullest_host_that_fits_or_the_emptiest(policy, chosen):
    decision = choose_dedicated_host(HOSTS, RESERVED, 4, 8192, policy)
    assert decision.chosen == chosen
    assert [c.name for c in decision.candidates] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # in address order
    third = decision.candidates[2]
    assert (third.accepted, third.reason) == (False, "memory: 0 of 4096 MB reserved, 8192 needed")


def test_no_dedicated_host_with_room_chooses_none_and_says_what_holds_each():
    decision = choose_dedicated_host(HOSTS[:1], RESERVED, 9, 1024, "fill_first")
    assert decision.chosen is None
    assert decision.candidates[0].reason == (
        "CPU: 8 of 16 cores reserved (held by pool-dedicated-01, pool-dedicated-02), 9 needed"
    )
    with pytest.raises(PlacementError, match="unknown"):
        choose_dedicated_host(HOSTS, RESERVED, 1, 1, "random")
