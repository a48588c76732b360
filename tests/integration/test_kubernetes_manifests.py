"""The kubernetes backend of odoo_runtime: every plan's manifests, rendered and validated against the Kubernetes
schemas (kubernetes-validate, strict), then checked against the plan. No Kubernetes API runs here."""

from __future__ import annotations

import base64
import configparser
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import psycopg
import pytest
import yaml
from ansible.template import trust_as_template
from packaging.version import Version

from .conftest import PlaybookRun, ansible_playbook
from conftest import INVENTORIES, load_yaml, role_templar

PLAYBOOK = "tests/integration/playbooks/render_kubernetes.yml"
PLANS: dict[str, dict] = load_yaml(INVENTORIES / "local/group_vars/all/plans.yml")["saasodoo_plans"]
PASSWORD = "test-only-tenant-password"  # the playbook's defaults
CEPHX_KEY = "test-only-cephx-key=="
NAMESPACE = "saasodoo-tenants"
ISSUER = "letsencrypt-test"
DB_CA = "platform-ca-certificate-pem"  # a -e value: no spaces
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
EXPECTED_FILES = [
    "01-secret.yml",
    "02-configmap.yml",
    "03-persistentvolume.yml",
    "04-persistentvolumeclaim.yml",
    "05-service.yml",
    "06-networkpolicy.yml",
    "07-endpointslice.yml",
    "08-deployment.yml",
    "09-ingress.yml",
]
DB_HOST, DB_PORT = "10.20.1.11", 6432  # the playbook's defaults: the tenant's server before a move


def kubernetes_versions() -> list[str]:
    """The oldest version we support and the newest the installed kubernetes-validate has schemas for."""
    newest = Version(kubernetes_validate.latest_version())
    assert newest >= Version("1.30"), f"kubernetes-validate {kubernetes_validate.__version__} stops at {newest}"
    return sorted({"1.30", f"{newest.major}.{newest.minor}"}, key=Version)


VERSIONS = kubernetes_versions()


def validate_strictly(doc: dict, version: str) -> None:
    """Validate one object against the strict schema of exactly `version`.

    kubernetes_validate.validate raises SchemaNotFoundError for a kind (or apiVersion) it has no schema for; its
    CLI turns that into a warning and passes. Here it propagates: an object nothing checked is a failure.
    """
    validated = kubernetes_validate.validate(doc, version, strict=True)
    assert validated == version, f"{doc['kind']} was checked against Kubernetes {validated}, not {version}"


@dataclass(frozen=True)
class Case:
    tenant: str
    plan: str
    state: str = "started"
    issuer: str = ""

    @property
    def id(self) -> str:
        return f"{self.tenant}-{self.plan}-{self.state}"

    @property
    def name(self) -> str:
        return "odoo-" + self.tenant.lower().replace("_", "-")


# Every plan, same tenant (so their configs differ only by the plan), with TLS; and one stopped tenant whose id
# needs the DNS-safe name, without TLS.
CASES = [Case("acme", plan, issuer=ISSUER) for plan in PLANS] + [Case("Acme_Corp", "basic-monthly", "stopped")]


@dataclass
class Rendered:
    case: Case
    directory: Path
    run: PlaybookRun

    @property
    def files(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir())

    @property
    def docs(self) -> list[dict]:
        docs = []
        for name in self.files:
            docs += [d for d in yaml.safe_load_all((self.directory / name).read_text()) if d is not None]
        return docs

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == (name or self.case.name)]
        assert len(found) == 1, f"{kind} {name or self.case.name}: {len(found)} objects"
        return found[0]

    @property
    def container(self) -> dict:
        (container,) = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
        return container

    @property
    def sidecar(self) -> dict:
        (pgbouncer,) = self.one("Deployment")["spec"]["template"]["spec"]["initContainers"]
        return pgbouncer

    @property
    def pgbouncer_ini(self) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
        parser.read_string(self.one("ConfigMap")["data"]["pgbouncer.ini"])
        return parser


def render(render_dir: Path, case: Case, *extra: str) -> PlaybookRun:
    # `-i localhost,`: the local inventory's registry source would need the running platform.
    variables = {
        "render_dir": render_dir,
        "tenant_id": case.tenant,
        "plan": case.plan,
        "state": case.state,
        "cluster_issuer": case.issuer,
    }
    if case.issuer:  # the TLS cases check their database's certificate too
        variables |= {"odoo_runtime_db_sslmode": "verify-full", "odoo_runtime_db_ca_certificate": DB_CA}
    return ansible_playbook(
        PLAYBOOK,
        "--diff",
        *(arg for name, value in variables.items() for arg in ("-e", f"{name}={value}")),
        *extra,
        inventory="localhost,",
    )


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> dict[str, Rendered]:
    dirs = {case.id: tmp_path_factory.mktemp("manifests") for case in CASES}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        runs = dict(zip(dirs, pool.map(lambda c: render(dirs[c.id], c), CASES), strict=True))
    for case_id, run in runs.items():
        assert run.returncode == 0, f"{case_id}:\n{run.output}"
    return {c.id: Rendered(c, dirs[c.id] / c.tenant, runs[c.id]) for c in CASES}


@pytest.fixture(params=CASES, ids=lambda c: c.id)
def manifests(request, rendered) -> Rendered:
    return rendered[request.param.id]


# --- the validation helper refuses what it cannot check ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [
        {"apiVersion": "saasodoo.io/v1", "kind": "OdooTenant", "metadata": {"name": "acme"}},
        # A real kind under an apiVersion these Kubernetes versions no longer serve.
        {"apiVersion": "extensions/v1beta1", "kind": "Ingress", "metadata": {"name": "acme"}, "spec": {}},
    ],
    ids=["unknown-kind", "removed-api-version"],
)
def test_validation_refuses_objects_it_has_no_schema_for(doc, version):
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_strictly(doc, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_validation_is_strict(rendered, version):
    service = rendered[CASES[0].id].one("Service")
    validate_strictly(service, version)
    misspelt = {**service, "spec": {**service["spec"], "clusterIp": "None"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strictly(misspelt, version)
    mistyped = {**service, "spec": {**service["spec"], "ports": [{"port": "http"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_strictly(mistyped, version)


# --- every plan's manifests -------------------------------------------------------------------------------------


def test_one_file_per_kind_in_apply_order(manifests):
    assert manifests.files == EXPECTED_FILES
    assert [(d["kind"], d["metadata"]["name"]) for d in manifests.docs] == [
        ("Secret", manifests.case.name),
        ("Secret", f"{manifests.case.name}-cephfs"),
        ("ConfigMap", manifests.case.name),
        ("PersistentVolume", manifests.case.name),
        ("PersistentVolumeClaim", manifests.case.name),
        ("Service", manifests.case.name),
        ("Service", f"{manifests.case.name}-db"),
        ("NetworkPolicy", manifests.case.name),
        ("EndpointSlice", f"{manifests.case.name}-db"),
        ("Deployment", manifests.case.name),
        ("Ingress", manifests.case.name),
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_strictly(manifests, version):
    for doc in manifests.docs:
        validate_strictly(doc, version)


def test_names_namespaces_and_labels(manifests):
    case = manifests.case
    assert DNS_LABEL.fullmatch(case.name)
    for doc in manifests.docs:
        metadata = doc["metadata"]
        assert DNS_LABEL.fullmatch(metadata["name"].removesuffix("-cephfs"))
        assert metadata.get("namespace") == (None if doc["kind"] == "PersistentVolume" else NAMESPACE)
        slice_labels = {
            "kubernetes.io/service-name": f"{case.name}-db",  # the Service it belongs to
            "endpointslice.kubernetes.io/managed-by": "saasodoo.io",  # not the cluster's EndpointSlice controller
        }
        assert metadata["labels"] == {
            "app.kubernetes.io/name": "odoo",
            "app.kubernetes.io/instance": case.tenant,
            "saasodoo.io/tenant": case.tenant,
            "saasodoo.io/plan": case.plan,
        } | (slice_labels if doc["kind"] == "EndpointSlice" else {})


def test_config_has_no_password_and_the_secret_has_it(manifests):
    conf = manifests.one("ConfigMap")["data"]["odoo.conf"]
    assert not re.search(r"^\s*db_password\b", conf, re.MULTILINE)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(conf)
    options = parser["options"]
    assert "db_password" not in options
    assert options["http_interface"] == "0.0.0.0"  # noqa: S104 - the pod's address; the Service fronts it
    assert options["http_port"] == "8069"
    assert options["data_dir"] == "/var/lib/odoo"
    assert options["workers"] == str(PLANS[manifests.case.plan]["odoo_workers"])
    # Its own PgBouncer, on the pod's loopback: no network in between, nothing to check.
    assert (options["db_host"], options["db_port"], options["db_sslmode"]) == ("127.0.0.1", "6432", "disable")

    secret = manifests.one("Secret")
    assert secret["type"] == "Opaque"
    assert base64.b64decode(secret["data"]["PGPASSWORD"]).decode() == PASSWORD
    # The PgBouncer's auth file: the role's stable SCRAM verifier, never the password.
    users = base64.b64decode(secret["data"]["pgbouncer-users.txt"]).decode()
    assert re.fullmatch(r'"t_acme(_corp)?" "SCRAM-SHA-256\$4096:[^"]+"\n', users), users
    assert PASSWORD not in users
    assert manifests.container["env"] == [
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": manifests.case.name, "key": "PGPASSWORD"}}}
    ]
    pgbouncer = manifests.pgbouncer_ini["pgbouncer"]
    if manifests.case.issuer:  # the PgBouncer checks the database's certificate against the CA beside its config
        assert manifests.one("ConfigMap")["data"]["db-ca.crt"].strip() == DB_CA
        # verify-full asked for: the chain only, as it dials the Service, a name no server certificate carries.
        assert pgbouncer["server_tls_sslmode"] == "verify-ca"
        assert pgbouncer["server_tls_ca_file"] == "/etc/pgbouncer/db-ca.crt"
    else:
        assert "db-ca.crt" not in manifests.one("ConfigMap")["data"] and "server_tls_ca_file" not in pgbouncer


def test_odoo_reaches_its_database_through_its_own_pgbouncer(manifests):
    """A native sidecar (an init container that keeps running, listening before Odoo starts) forwards the
    tenant's database and `postgres` to the tenant's database Service, which has no selector: its EndpointSlice
    names the server."""
    name = manifests.case.name
    sidecar = manifests.sidecar
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"]
    assert sidecar["startupProbe"]["tcpSocket"] == {"port": "pgbouncer"}
    assert {"name": "pgbouncer", "containerPort": 6432, "protocol": "TCP"} in sidecar["ports"]
    ini = manifests.pgbouncer_ini
    db = "t_" + manifests.case.tenant.lower()
    target = f"host={name}-db.{NAMESPACE}.svc port=5432"
    assert dict(ini["databases"]) == {
        db: f"{target} dbname={db}",
        "postgres": f"{target} dbname=postgres pool_mode=session",
    }
    # Every address of the pod: the kubelet probes the pod's; the NetworkPolicy admits no other pod to 6432.
    assert (ini["pgbouncer"]["listen_addr"], ini["pgbouncer"]["listen_port"]) == ("*", "6432")
    assert ini["pgbouncer"]["auth_file"] == "/etc/pgbouncer/pgbouncer-users.txt"
    (mount,) = sidecar["volumeMounts"]
    volumes = {v["name"]: v for v in manifests.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    sources = volumes[mount["name"]]["projected"]["sources"]
    assert mount == {"name": "pgbouncer", "mountPath": "/etc/pgbouncer", "readOnly": True}
    assert [s["configMap"]["items"][0]["key"] for s in sources if "configMap" in s] == ["pgbouncer.ini"]
    assert [s["secret"]["items"] for s in sources if "secret" in s] == [
        [{"key": "pgbouncer-users.txt", "path": "pgbouncer-users.txt"}]
    ]
    service = manifests.one("Service", f"{name}-db")["spec"]
    assert "selector" not in service and service["ports"] == [{"name": "postgres", "port": 5432, "protocol": "TCP"}]
    endpoints = manifests.one("EndpointSlice", f"{name}-db")
    assert endpoints["addressType"] == "IPv4"
    assert [e["addresses"] for e in endpoints["endpoints"]] == [[DB_HOST]]
    assert endpoints["ports"] == [{"name": "postgres", "port": DB_PORT, "protocol": "TCP"}]


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_sidecars_config_runs_in_a_real_pgbouncer(rendered):
    """Debian's PgBouncer loads the sidecar's rendered config and auth file (moved into a scratch directory, on a free
    loopback port, run as the postgres user as PgBouncer refuses root): it takes the tenant's password against the
    stable verifier and refuses another one, before it ever dials the database Service (no such name here)."""
    manifests = rendered[CASES[-1].id]  # without TLS: no CA file to load
    secret = manifests.one("Secret")["data"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scratch = Path(tempfile.mkdtemp(prefix="sidecar-pgbouncer-"))
    try:
        scratch.chmod(0o755)
        ini = manifests.one("ConfigMap")["data"]["pgbouncer.ini"].replace("/etc/pgbouncer", str(scratch))
        ini = ini.replace("listen_addr = *", "listen_addr = 127.0.0.1").replace(
            "listen_port = 6432", f"listen_port = {port}"
        )
        (scratch / "pgbouncer.ini").write_text(ini)
        (scratch / "pgbouncer-users.txt").write_bytes(base64.b64decode(secret["pgbouncer-users.txt"]))
        for name in ("pgbouncer.ini", "pgbouncer-users.txt"):
            shutil.chown(scratch / name, "postgres")
            (scratch / name).chmod(0o400)
        pgbouncer = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "/usr/sbin/pgbouncer", str(scratch / "pgbouncer.ini")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while pgbouncer.poll() is None and not listening(port):
                assert time.monotonic() < deadline, "PgBouncer did not listen within 10 s"
                time.sleep(0.05)  # another process: poll its port
            assert pgbouncer.poll() is None, pgbouncer.communicate()[0]

            def login_error(password: str) -> str:
                db = "t_acme_corp"
                with pytest.raises(psycopg.OperationalError) as failed:
                    psycopg.connect(host="127.0.0.1", port=port, dbname=db, user=db, password=password,
                                    sslmode="disable", connect_timeout=3).close()  # fmt: skip
                return str(failed.value)

            assert "SASL authentication failed" in login_error("not-the-tenants-password")
            assert "SASL authentication failed" not in login_error(PASSWORD)
        finally:
            pgbouncer.terminate()
            log = pgbouncer.communicate(timeout=10)[0]
        assert "odoo-acme-corp-db.saasodoo-tenants.svc" in log, log  # it went on to dial the Service
    finally:
        shutil.rmtree(scratch)


def test_a_database_move_restarts_nothing(rendered, tmp_path):
    """The same tenant with its database on another server: only the EndpointSlice and the NetworkPolicy's egress
    (the new server's port; its address too without peers of its own) change. The Deployment, its ConfigMap and its
    Secret are the same, so applying them rolls no pod: Odoo keeps running, its PgBouncer's next server connections
    going to the new server."""
    before = rendered[CASES[0].id]
    after_run = render(tmp_path, before.case, "-e", "db_host=10.20.1.12", "-e", "db_port=6433")
    assert after_run.returncode == 0, after_run.output
    after = Rendered(before.case, tmp_path / before.case.tenant, after_run)
    changed = {(d["kind"], d["metadata"]["name"]) for d in after.docs if d not in before.docs}
    assert changed == {("EndpointSlice", f"{before.case.name}-db"), ("NetworkPolicy", before.case.name)}
    endpoints = after.one("EndpointSlice", f"{before.case.name}-db")
    assert (endpoints["endpoints"][0]["addresses"], endpoints["ports"][0]["port"]) == (["10.20.1.12"], 6433)
    assert after.one("NetworkPolicy")["spec"]["egress"][1]["ports"] == [{"protocol": "TCP", "port": 6433}]

    # The tenant reaches its own endpoint only (production.example), or the peers an operator lists instead.
    assert after.one("NetworkPolicy")["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.20.1.12/32"}}]
    peers = [{"ipBlock": {"cidr": "10.20.1.0/24"}}]
    listed = render(tmp_path / "peers", before.case, "-e", "db_host=10.20.1.12", "-e", json.dumps({"db_peers": peers}))
    assert listed.returncode == 0, listed.output
    policy = Rendered(before.case, tmp_path / "peers" / before.case.tenant, listed).one("NetworkPolicy")
    assert policy["spec"]["egress"][1]["to"] == peers


def test_a_moves_repoint_writes_only_where_the_database_is(tmp_path):
    """The role's repoint entry point, which a move runs the moment the registry points at the new server, renders
    the NetworkPolicy and the EndpointSlice for it and leaves every other object as it was; the main entry point,
    run after the move, then finds nothing left to change."""
    case = CASES[0]
    assert render(tmp_path, case).returncode == 0
    before = {path.name: path.read_text() for path in (tmp_path / case.tenant).iterdir()}
    new_server = ("-e", "db_host=10.20.1.12", "-e", "db_port=6433")
    repointed = render(tmp_path, case, "-e", "entry=repoint", *new_server)
    assert repointed.returncode == 0, repointed.output
    after = {path.name: path.read_text() for path in (tmp_path / case.tenant).iterdir()}
    assert after.keys() == before.keys()
    changed = sorted(name.split("-", 1)[1] for name in after if after[name] != before[name])
    assert changed == ["endpointslice.yml", "networkpolicy.yml"]
    main = render(tmp_path, case, *new_server)
    assert main.returncode == 0, main.output
    assert main.recap["localhost"]["changed"] == 0, main.output


def test_a_database_host_that_is_not_an_address_is_refused(tmp_path):
    """An EndpointSlice holds addresses: a name is refused before anything is written, saying so."""
    run = render(tmp_path, CASES[0], "-e", "db_host=pgbouncer.saasodoo.svc")
    assert run.returncode != 0
    assert "pgbouncer.saasodoo.svc is not one" in run.output
    assert not (tmp_path / CASES[0].tenant).exists()


def test_deployment_runs_the_plan(manifests):
    case, plan = manifests.case, PLANS[manifests.case.plan]
    deployment = manifests.one("Deployment")
    assert deployment["spec"]["replicas"] == (0 if case.state == "stopped" else 1)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = manifests.container
    assert container["command"] + container["args"] == ["odoo", "-c", "/etc/odoo/odoo.conf"]
    expected = {"cpu": str(plan["cpu"]), "memory": f"{plan['memory_mb']}Mi"}
    assert container["resources"] == {"requests": expected, "limits": expected}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/web/health", "port": "http"}
    assert {"name": "http", "containerPort": 8069, "protocol": "TCP"} in container["ports"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/etc/odoo"]]["configMap"]["name"] == case.name
    assert volumes[mounts["/var/lib/odoo"]]["persistentVolumeClaim"]["claimName"] == case.name


def test_deployment_is_locked_down(manifests):
    pod = manifests.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 101
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in (manifests.container["securityContext"], manifests.sidecar["securityContext"]):
        assert container["allowPrivilegeEscalation"] is False
        assert container["readOnlyRootFilesystem"] is True
        assert container["capabilities"] == {"drop": ["ALL"]}


def test_plans_roll_the_pods(rendered):
    """The pod template's checksum follows odoo.conf: the same tenant on a plan of other limits gets new pods, on a
    plan of the same limits (premium to premium-ha: only its database's server differs) keeps them."""
    acme = [c for c in CASES if c.tenant == "acme"]
    pods = {c.plan: rendered[c.id].one("Deployment")["spec"]["template"]["metadata"] for c in acme}
    checksums = {plan: pod["annotations"]["saasodoo.io/config-checksum"] for plan, pod in pods.items()}
    assert set(checksums) == set(PLANS)
    keys = ("odoo_workers", "memory_mb", "db_connection_limit")  # what odoo.conf holds of a plan
    limits = {plan: tuple(PLANS[plan][k] for k in keys) for plan in PLANS}
    for plan, other in itertools.combinations(PLANS, 2):
        assert (checksums[plan] == checksums[other]) == (limits[plan] == limits[other]), (plan, other)
    assert len(set(limits.values())) > 1
    assert all(re.fullmatch(r"[0-9a-f]{64}", c) for c in checksums.values())


def test_volume_is_the_tenants_cephfs_subtree(manifests):
    case, plan = manifests.case, PLANS[manifests.case.plan]
    pv, pvc = manifests.one("PersistentVolume"), manifests.one("PersistentVolumeClaim")
    assert pv["spec"]["capacity"] == {"storage": f"{plan['storage_gb']}Gi"}
    assert pv["spec"]["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["storageClassName"] == pvc["spec"]["storageClassName"] == ""
    csi = pv["spec"]["csi"]
    assert csi["driver"] == "cephfs.csi.ceph.com"
    assert csi["volumeAttributes"] == {
        "clusterID": "6f1c2b9e-3d4a-4c8e-9b7f-2a5d8e0c1f34",
        "fsName": "saasodoo_fs",
        "staticVolume": "true",
        "rootPath": f"/tenants/{case.tenant}",
    }
    assert csi["nodeStageSecretRef"] == {"name": f"{case.name}-cephfs", "namespace": NAMESPACE}
    cephx = manifests.one("Secret", f"{case.name}-cephfs")["data"]
    assert base64.b64decode(cephx["userID"]).decode() == f"saasodoo-tenant-{case.tenant}"  # its own client
    assert base64.b64decode(cephx["userKey"]).decode() == CEPHX_KEY
    # Bound both ways: the claim names the volume, the volume is reserved for the claim.
    assert pvc["spec"]["volumeName"] == case.name
    assert pv["spec"]["claimRef"] == {"namespace": NAMESPACE, "name": case.name}
    assert quantity(pvc["spec"]["resources"]["requests"]["storage"]) <= quantity(pv["spec"]["capacity"]["storage"])


def quantity(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", value).groups()
    return int(number) * 1024 ** (["", "Ki", "Mi", "Gi", "Ti"].index(unit or ""))


def test_service_and_ingress_route_the_tenant(manifests):
    case = manifests.case
    pod_labels = manifests.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = manifests.one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert manifests.one("Deployment")["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == 8069

    ingress = manifests.one("Ingress")["spec"]
    host = f"{case.name.removeprefix('odoo-')}.odoo.example.com"
    assert ingress["ingressClassName"] == "nginx"
    (rule,) = ingress["rules"]
    assert rule["host"] == host
    paths = {p["path"]: p for p in rule["http"]["paths"]}
    assert paths["/"]["pathType"] == "Prefix"
    assert paths["/"]["backend"] == {"service": {"name": case.name, "port": {"name": "http"}}}
    assert all(p["backend"]["service"]["port"]["name"] in ports for p in paths.values())
    annotations = manifests.one("Ingress")["metadata"]["annotations"]
    assert all(isinstance(v, str) for v in annotations.values())
    if case.issuer:
        assert ingress["tls"] == [{"hosts": [host], "secretName": f"{case.name}-tls"}]
        assert annotations["cert-manager.io/cluster-issuer"] == case.issuer
    else:
        assert "tls" not in ingress and "cert-manager.io/cluster-issuer" not in annotations


def test_secrets_stay_out_of_the_output(manifests):
    """The runs use --diff, which would print the Secrets' files unless they are no_log."""
    for secret in (PASSWORD, CEPHX_KEY):
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            assert form not in manifests.run.output


# --- the render mode's own contract -----------------------------------------------------------------------------


def test_rendering_again_changes_nothing(rendered):
    first = rendered[CASES[0].id]
    again = render(first.directory.parent, first.case)
    assert again.returncode == 0, again.output
    assert again.recap["localhost"]["changed"] == 0, again.output
    assert first.files == EXPECTED_FILES


def test_absent_removes_the_rendered_files(tmp_path):
    case = CASES[0]
    assert render(tmp_path, case).returncode == 0
    assert (tmp_path / case.tenant / EXPECTED_FILES[0]).exists()
    gone = render(tmp_path, Case(case.tenant, case.plan, "absent"))
    assert gone.returncode == 0, gone.output
    assert not (tmp_path / case.tenant).exists()


def test_tenants_pods_reach_only_their_ingress_dns_and_database(manifests):
    policy = manifests.one("NetworkPolicy")["spec"]
    # The tenant's pods, its Odoo's and its Jobs' (test_a_plan_change_installs_its_modules_by_a_job_of_its_pod).
    assert policy["podSelector"]["matchLabels"] == {"saasodoo.io/tenant": manifests.case.tenant}
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels(manifests.one("Deployment")).items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]  # anything not allowed below is denied
    [ingress] = policy["ingress"]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert sorted(p["port"] for p in ingress["ports"]) == [8069, 8072]
    dns, database = policy["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {p["port"] for p in dns["ports"]} == {53}
    # The server's own address and port: a policy applies to where the Service's connections really go.
    assert database["to"] == [{"ipBlock": {"cidr": "10.20.1.11/32"}}]
    assert database["ports"] == [{"protocol": "TCP", "port": DB_PORT}]


def test_without_the_tenants_key_its_ceph_secret_is_left_as_it_is(tmp_path):
    cephfs = '{"cephfs": {"cluster_id": "c", "fs_name": "f", "path": "/tenants/acme", "user": "", "key": ""}}'
    run = render(tmp_path, CASES[0], "-e", cephfs)
    assert run.returncode == 0, run.output
    docs = [d for f in sorted((tmp_path / CASES[0].tenant).iterdir()) for d in yaml.safe_load_all(f.read_text()) if d]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [CASES[0].name]


def test_missing_cephfs_credentials_fail_before_anything_is_written(tmp_path):
    cephfs = '{"cephfs": {"cluster_id": "c", "fs_name": "f", "path": "/tenants/acme", "key": "k"}}'
    run = render(tmp_path, CASES[0], "-e", cephfs)
    assert run.returncode != 0
    assert "odoo_runtime_kubernetes_cephfs" in run.output
    assert not (tmp_path / CASES[0].tenant).exists()


# --- one-off Odoo runs: a plan change's modules, an update's new image ------------------------------------------


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def render_job(render_dir: Path, case: Case, modules: dict, image: str = "") -> tuple[Rendered, dict]:
    """The tenant's objects, then its Job (the role's install_modules entry) beside them."""
    assert render(render_dir, case).returncode == 0
    run = render(
        render_dir,
        case,
        "-e",
        "entry=install_modules",
        "-e",
        json.dumps(modules),
        *(["-e", f"image={image}"] if image else []),
    )
    assert run.returncode == 0, run.output
    rendered = Rendered(case, render_dir / case.tenant, run)
    return rendered, rendered.one("Job", "odoojob-" + case.name.removeprefix("odoo-"))


def test_a_plan_change_installs_its_modules_by_a_job_of_its_pod(tmp_path):
    case = Case("Acme_Corp", "premium-monthly", issuer=ISSUER)
    rendered, job = render_job(tmp_path, case, {"install_modules": ["stock", "project"]})
    assert rendered.files == [*EXPECTED_FILES, "10-job.yml"]
    for version in VERSIONS:
        validate_strictly(job, version)
    deployment = rendered.one("Deployment")
    pod, served = job["spec"]["template"]["spec"], deployment["spec"]["template"]["spec"]
    # The serving pod's PgBouncer sidecar, security context, volumes and plan's resources; run once, never again.
    assert {k: v for k, v in pod.items() if k not in ("containers", "restartPolicy")} == {
        k: v for k, v in served.items() if k != "containers"
    }
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 1800
    [odoo], [serving] = pod["containers"], served["containers"]
    assert odoo["args"] == [
        "-c", "/etc/odoo/odoo.conf", "-i", "stock,project", "--db_maxconn=3", "--no-http", "--stop-after-init"
    ]  # fmt: skip
    served_only = ("args", "ports", "startupProbe", "readinessProbe", "livenessProbe")
    assert {k: v for k, v in odoo.items() if k != "args"} == {k: v for k, v in serving.items() if k not in served_only}
    # No customer request reaches it (the Service does not select it); its egress is the tenant's (the policy does).
    labels = pod_labels(job)
    assert not rendered.one("Service")["spec"]["selector"].items() <= labels.items()
    assert rendered.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    # A name no tenant's object has: each of those starts with odoo-.
    assert not job["metadata"]["name"].startswith("odoo-")
    again = render(tmp_path, case, "-e", "entry=install_modules", "-e", '{"install_modules": ["stock", "project"]}')
    assert again.returncode == 0 and again.recap["localhost"]["changed"] == 0, again.output


def test_an_update_runs_every_module_on_the_new_image(tmp_path):
    image = "registry.example.com/odoo:18.0-20261201"
    rendered, job = render_job(tmp_path, CASES[0], {"update_modules": ["all"]}, image=image)
    [odoo] = job["spec"]["template"]["spec"]["containers"]
    assert odoo["image"] == image
    assert rendered.container["image"] != image  # the serving pod's stays until the update starts it on the new one
    assert odoo["args"] == [
        "-c",
        "/etc/odoo/odoo.conf",
        "-u",
        "all",
        "--db_maxconn=3",
        "--no-http",
        "--stop-after-init",
    ]


@pytest.mark.parametrize("entry", ["main", "install_modules"])
def test_an_odoo_bin_command_is_refused_as_an_image(tmp_path, entry):
    """A tenant recorded at an odoo-bin path before builds were images here: no pod is given it to run."""
    run = render(
        tmp_path,
        CASES[0],
        "-e",
        f"entry={entry}",
        "-e",
        '{"install_modules": ["stock"]}',
        "-e",
        "image=/opt/odoo/18.0/odoo-bin",
    )
    assert run.returncode != 0
    assert "odoo_runtime_kubernetes_image" in run.output and '"/opt/odoo/18.0/odoo-bin"' in run.output, run.output
    assert not (tmp_path / CASES[0].tenant).exists()


def test_a_job_without_modules_is_refused(tmp_path):
    run = render(tmp_path, CASES[0], "-e", "entry=install_modules")
    assert run.returncode != 0
    assert "odoo_runtime_install_modules or odoo_runtime_update_modules" in run.output


def role_value(name: str, **inputs):
    """One of roles/odoo_runtime's internal values, templated with these inputs as Ansible would."""
    return role_templar("odoo_runtime", inputs).template(trust_as_template("{{ " + name + " }}"))


def test_a_stop_and_a_job_wait_on_what_the_api_says(rendered):
    """The two reads the apply path polls, evaluated as the role evaluates them (no cluster runs here): the label
    selector of a stop's wait for the pod to be gone, and a Job's end from its conditions."""
    labels = pod_labels(rendered[CASES[0].id].one("Deployment"))
    selector = role_value("__odoo_runtime_kubernetes_pod_selector", odoo_runtime_tenant_id="acme")
    assert selector == ["app.kubernetes.io/name=odoo", "app.kubernetes.io/instance=acme"]
    assert all(labels[key] == value for key, value in (term.split("=") for term in selector))

    def ended(read: dict) -> list:
        conditions = role_value("__odoo_runtime_kubernetes_job_ended", __odoo_runtime_kubernetes_job=read)
        return [condition["type"] for condition in conditions]

    def job(*conditions) -> dict:
        return {"resources": [{"status": {"conditions": [{"type": t, "status": s} for t, s in conditions]}}]}

    assert ended({"resources": []}) == []  # not there yet
    assert ended({"resources": [{"status": {}}]}) == [] and ended({"resources": [{"status": None}]}) == []
    assert ended(job(("SuccessCriteriaMet", "True"))) == []  # 1.31+: before Complete
    assert ended(job(("FailureTarget", "True"))) == []  # 1.31+: its pods still terminating
    assert ended(job(("Complete", "True"))) == ["Complete"]
    assert ended(job(("Failed", "True"))) == ["Failed"] and ended(job(("Failed", "False"))) == []
