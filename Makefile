# SaaSOdoo ops: the two commands are `make demo` and `make test`; everything else is a step of them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
# Debian's own Python 3.11, built with profile-guided and link-time optimisation: Ansible's controller, Mitogen's
# children on the local hosts and the tests run pure-Python code through it about 1.7 times faster than through a
# plain source build (a pyenv one on PATH: a tenant suspend 6.5 s against 3.9 s on this machine).
PYTHON ?= /usr/bin/python3
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# Third-party collections come from the pinned `ansible` wheel (Galaxy is unreachable here);
# collections/requirements.yml names the same versions and a unit test keeps the two in step.
ANSIBLE_WHEEL_VERSION := 12.3.0
THIRD_PARTY_COLLECTIONS := community/postgresql kubernetes/core community/crypto amazon/aws
COLLECTIONS_DIR := collections/ansible_collections
COLLECTIONS_STAMP := $(COLLECTIONS_DIR)/.installed-from-ansible-$(ANSIBLE_WHEEL_VERSION)
# libnss-myhostname resolves *.localhost to loopback (its install adds it to /etc/nsswitch.conf): the blackbox
# exporter reaches the tenants' https://<tenant>.odoo.localhost URLs as customers reach theirs.
APT_PACKAGES := postgresql-15 pgbackrest pgbouncer supervisor nginx-light ceph ceph-mds ceph-fuse radosgw attr curl python3-psycopg \
  python3-venv openssh-server iproute2 systemd prometheus prometheus-alertmanager prometheus-node-exporter \
  prometheus-postgres-exporter prometheus-blackbox-exporter python3-prometheus-client libnss-myhostname \
  patroni etcd-server etcd-client haproxy cgroup-tools
ROLES := postgres_server pgbouncer platform_registry tenant_database odoo_template storage odoo_runtime webhook_runner ceph_cluster \
  monitoring postgres_ha

.PHONY: help setup system-packages state-access reserved-ports demo test lint unit molecule integration integration-streams integration-alone integration-beside reference sanity alone-pass molecule-beside-alone streams-pass acceptance bench soak down clean

help:
	@echo "make demo   set up, converge the local platform, play four customers' lives through Kill Bill and the runner"
	@echo "make test   set up, unit tests, integration tests with molecule scenarios and lint beside them"
	@echo "make setup | lint | unit | molecule | integration (= integration-streams, integration-alone, integration-beside)"
	@echo "     | acceptance ODOO_BIN=… | bench | soak | reference | down | clean"

# The stamp names the interpreter: a venv made from another Python is rebuilt on this one.
VENV_STAMP := $(VENV)/.installed-with$(subst /,-,$(PYTHON))

setup: system-packages state-access reserved-ports $(VENV_STAMP) $(COLLECTIONS_STAMP)

# Debian's packages start their daemons as they install (Prometheus on 0.0.0.0:9090, ...) unless policy-rc.d says
# no: the platform runs them itself, so a policy refusing every start is put in place for the install when none is.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "Missing system packages: $$missing. Run 'make setup' as root, or: sudo apt-get install -y $$missing" >&2; exit 1; \
	fi; \
	echo "Installing system packages: $$missing"; \
	policy=/usr/sbin/policy-rc.d; if [ ! -e $$policy ]; then \
	  printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 0755 $$policy; trap 'rm -f '$$policy EXIT; fi; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }

# The clusters and PgBouncers run as the postgres OS user with their state under .state/ in this
# checkout, so postgres must be able to pass through every directory above it (a clone made in a
# `mktemp -d` directory, mode 0700, is not). Grant search (o+x) only, never read.
state-access:
	@dir=$(CURDIR); while [ "$$dir" != / ]; do \
	  if ! runuser -u postgres -- test -x "$$dir" 2>/dev/null; then \
	    if [ "$$(id -u)" != 0 ]; then echo "postgres cannot enter $$dir: run 'chmod o+x $$dir' as its owner" >&2; exit 1; fi; \
	    echo "Letting the postgres user pass through $$dir (chmod o+x)"; chmod o+x "$$dir"; \
	  fi; dir=$$(dirname "$$dir"); done

# The local platform, the tests and the benchmarks listen on fixed loopback ports inside the kernel's ephemeral range
# (32768-60999): a client connection that took one as its source port (in TIME_WAIT too) makes a server's bind
# fail with "Address already in use". Reserved, no connection takes them; ports reserved before are kept.
RESERVED_PORTS := 54400-54799,55400-57099,58000-59999
reserved-ports:
	@ports=/proc/sys/net/ipv4/ip_local_reserved_ports; current=$$(cat $$ports 2>/dev/null); \
	case ",$$current," in *",$(RESERVED_PORTS),"*) exit 0;; esac; \
	if echo "$${current:+$$current,}$(RESERVED_PORTS)" 2>/dev/null > $$ports; then \
	  echo "Reserved the platform's ports $(RESERVED_PORTS)"; \
	else echo "warning: could not reserve ports $(RESERVED_PORTS) (root can): a service may find its port taken" >&2; fi

$(VENV_STAMP): requirements.txt
	@if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import os, sys; sys.exit(os.path.realpath(sys._base_executable) != os.path.realpath("$(PYTHON)"))'; then \
	  echo "Rebuilding $(VENV) on $(PYTHON)"; rm -rf $(VENV); fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed*; touch $@

$(COLLECTIONS_STAMP): collections/requirements.yml
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BIN)/pip download -q --disable-pip-version-check --no-deps -d "$$tmp" ansible==$(ANSIBLE_WHEEL_VERSION); \
	for c in $(THIRD_PARTY_COLLECTIONS); do rm -rf $(COLLECTIONS_DIR)/$$c; done; \
	unzip -q -o "$$tmp"/ansible-$(ANSIBLE_WHEEL_VERSION)-py3-none-any.whl \
	  $(foreach c,$(THIRD_PARTY_COLLECTIONS),'ansible_collections/$(c)/*') -d collections/
	@rm -f $(COLLECTIONS_DIR)/.installed-from-ansible-*
	@touch $@
	@echo "Collections: $(THIRD_PARTY_COLLECTIONS) from ansible $(ANSIBLE_WHEEL_VERSION)"

# The customers' lives leave the platform as site.yml keeps it: a site.yml after them must change nothing.
demo: setup
	ansible-playbook playbooks/site.yml
	$(BIN)/python tests/e2e/demo.py
	@mkdir -p .state/logs; ansible-playbook playbooks/site.yml > .state/logs/demo-site.log 2>&1 || \
	  { tail -n 40 .state/logs/demo-site.log; exit 1; }; \
	if grep -E 'changed=[1-9]' .state/logs/demo-site.log; then \
	  grep -B2 '^changed:' .state/logs/demo-site.log; \
	  echo "make demo: site.yml changed the platform after the customers' lives (above)" >&2; exit 1; \
	fi; echo "site.yml after the customers' lives: nothing changed"
	ansible-playbook playbooks/platform_status.yml

# Each stage's time is printed at the end (and as far as it got when one fails).
TEST_STAGES := alone-pass streams-pass
test: setup
	@times=""; for stage in $(TEST_STAGES); do \
	  started=$$(date +%s); \
	  if ! $(MAKE) --no-print-directory $$stage; then echo "make test: $$stage failed;$$times"; exit 1; fi; \
	  times="$$times $$stage $$(( $$(date +%s) - started ))s"; \
	done; echo "make test stage times:$$times"

# The monitoring's configurations and alert rules as promtool, amtool and the blackbox exporter check them, rendered
# from roles/monitoring's templates.
lint: setup
	yamllint --strict .
	ruff check .
	ruff format --check .
	ansible-lint
	pytest -q -p no:cacheprovider tests/unit/test_monitoring_config.py tests/unit/test_alert_rules.py
	python tools/reference.py --check
	$(MAKE) --no-print-directory sanity

# ansible-test sanity on our collection (validate-modules, pylint, pep8, import, ansible-doc and the rest), each test
# in a venv of its own, which ansible-test names by its pinned requirements: kept in the user's cache beside pip's,
# so a new clone makes them only once per machine. ansible-test bootstraps pip into those venvs with a script it
# downloads from a host out of reach here (ansible/ansible#77304), unless its cache has it:
# tools/ansible_test_get_pip.py takes that place. 24_2: the pip of ansible-core 2.19's ansible-test.
ANSIBLE_TEST_HOME ?= $(HOME)/.cache/saasodoo-ansible-test
sanity: setup
	@mkdir -p $(ANSIBLE_TEST_HOME)/.ansible/test/cache
	@cp tools/ansible_test_get_pip.py $(ANSIBLE_TEST_HOME)/.ansible/test/cache/get_pip_24_2.py
	cd $(COLLECTIONS_DIR)/saasodoo/platform && HOME=$(ANSIBLE_TEST_HOME) PIP_CACHE_DIR=$(HOME)/.cache/pip \
	  ansible-test sanity --venv --python 3.11 --requirements --color no

# docs/reference/ from the modules', filters', inventory plugin's and roles' own documentation (lint checks it).
reference: setup
	python tools/reference.py

unit: setup
	pytest tests/unit

# The scenarios are independent (each its own ports and state under .state/molecule/<role>): MOLECULE_JOBS run
# at once, each into its log; a failed one prints its log's end. .state/molecule is made first, traversable by the
# postgres and tenant users (a scenario's password lookup would make it 0700).
MOLECULE_JOBS ?= 2
MOLECULE_ROLES ?= $(ROLES)
molecule: setup
	@mkdir -p .state/logs .state/molecule; chmod 0755 .state/molecule; \
	printf '%s\n' $(MOLECULE_ROLES) | xargs -P $(MOLECULE_JOBS) -I{} sh -c \
	  'log=.state/logs/molecule-{}.log; started=$$(date +%s); \
	   if (cd roles/{} && molecule test) > $$log 2>&1; then \
	     echo "== molecule test: roles/{} passed in $$(( $$(date +%s) - started ))s"; \
	   else echo "== molecule test: roles/{} FAILED, the end of $$log:"; tail -n 80 $$log; exit 1; fi'

# Two passes, each on the local platform reset as a fresh clone has it (tests/integration/conftest.py says which
# test runs where): two streams of tests side by side, then the tests that need the platform to themselves; and the
# tests that use none of it.
integration: setup
	$(MAKE) --no-print-directory integration-streams
	$(MAKE) --no-print-directory integration-alone
	$(MAKE) --no-print-directory integration-beside
integration-streams: setup
	pytest tests/integration -n 2 -m "not alone and not beside" --durations=15
integration-alone: setup
	pytest tests/integration -m alone --durations=10
# What uses none of the local platform: the miniature of the production shape (tests/miniature), hosts of its own.
integration-beside: setup
	pytest tests/integration -m beside --durations=5

# The alone pass runs one test at a time and leaves a core idle: what needs no local platform uses it meanwhile,
# niced, one after another (the alone pass is the longer, so it goes first when both want the CPU): the unit tests,
# the beside pass (the miniature's own hosts, which the tests' down.yml leaves running), lint (CPU only) and a few
# molecule scenarios (their own ports and .state/molecule). Their lines come after.
BESIDE_ALONE := unit integration-beside lint molecule-beside-alone
# The scenarios that fit in what the alone pass leaves; the others run beside the streams (streams-pass).
MOLECULE_BESIDE_ALONE := storage ceph_cluster webhook_runner tenant_database postgres_ha
molecule-beside-alone: setup
	@$(MAKE) --no-print-directory molecule MOLECULE_JOBS=1 MOLECULE_ROLES="$(MOLECULE_BESIDE_ALONE)"
alone-pass: setup
	@mkdir -p .state/logs; failed=.state/logs/failed-beside-alone; rm -f $$failed; \
	for target in $(BESIDE_ALONE); do rm -f .state/logs/$$target.log; done; \
	( for target in $(BESIDE_ALONE); do \
	    nice -n 10 $(MAKE) --no-print-directory $$target > .state/logs/$$target.log 2>&1 || echo $$target >> $$failed; \
	  done ) & others=$$!; \
	trap 'kill $$others 2>/dev/null || true; $(PYTHON) tests/miniature/hosts.py down' INT TERM; \
	alone=0; $(MAKE) --no-print-directory integration-alone || alone=$$?; \
	wait $$others; for target in $(BESIDE_ALONE); do \
	  if grep -qx $$target $$failed 2>/dev/null; then echo "== make $$target FAILED:"; cat .state/logs/$$target.log; \
	  else echo "== make $$target passed, the end of its log:"; tail -n 12 .state/logs/$$target.log; fi; \
	done; [ $$alone -eq 0 ] && [ ! -e $$failed ]

# The streams on the platform as the alone pass left it (make test runs that pass first; without a platform up they
# start their own). Their tests wait on servers and Odoo a fifth of the time, a core idle then: the molecule
# scenarios (one after another, their own ports and .state/molecule, which the tests' down.yml leaves running) use it
# meanwhile, niced to take only what the streams leave. Their lines come after.
streams-pass: setup
	@mkdir -p .state/logs; \
	nice -n 10 $(MAKE) --no-print-directory molecule MOLECULE_JOBS=1 \
	  MOLECULE_ROLES="$(filter-out $(MOLECULE_BESIDE_ALONE),$(ROLES))" > .state/logs/molecule.log 2>&1 & molecule=$$!; \
	trap 'kill $$molecule 2>/dev/null || true' INT TERM; \
	streams=0; SAASODOO_TEST_PLATFORM=as-left $(MAKE) --no-print-directory integration-streams || streams=$$?; \
	scenarios=0; wait $$molecule || scenarios=$$?; cat .state/logs/molecule.log; \
	[ $$streams -eq 0 ] && [ $$scenarios -eq 0 ]

# The customers' lives against a real Odoo 18 instead of the stand-in (tests/acceptance). It resets the local platform.
ODOO_BIN ?=
acceptance: setup
	@if [ -z "$(ODOO_BIN)" ]; then \
	  echo "make acceptance runs tenants' lives against a real Odoo 18, which this repository does not ship:"; \
	  echo "  build one (an Odoo 18.0 checkout, a venv with its requirements.txt, readable by other users),"; \
	  echo "  then: make acceptance ODOO_BIN=/path/to/odoo-bin   (a command; it may start with its python)"; \
	  echo "Nothing was run."; exit 0; fi
	SAASODOO_ODOO_BIN="$(ODOO_BIN)" pytest tests/acceptance -v -s --durations=0

bench: setup
	$(BIN)/python bench/site_noop.py
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/runner.py
	$(BIN)/python bench/migration.py
	$(BIN)/python bench/migration.py --size-mb 4096 --drains 0
	$(BIN)/python bench/provision.py
	$(BIN)/python bench/failover.py
	$(BIN)/python bench/lifecycle.py
	$(BIN)/python bench/alerting.py
	$(BIN)/python bench/durability.py

# The long version of the move fault test: each of its eight kill cases three times (make test: once); the runner's
# reliability drill with eight accounts; the durability drills at 1 GB (make test runs them small): a server's data
# and local backups lost under a writer and rebuilt from S3 alone, a tenant's point-in-time restore.
soak: setup
	FAULT_ROUNDS=3 pytest tests/integration/test_tenant_move_faults.py -k killed
	RELIABILITY_ACCOUNTS=8 pytest tests/integration/test_webhook_runner.py -k reliability
	$(BIN)/python bench/durability.py

# The Ceph clusters first (the tests' and the molecule scenario's, if a run was cut short): they are mounted under
# .state, which `clean` then deletes.
down:
	$(PYTHON) tests/integration/ceph_cluster.py down
	$(PYTHON) tests/integration/ceph_cluster.py down .state/molecule/ceph
	$(PYTHON) tests/miniature/hosts.py down
	@if [ -x $(BIN)/ansible-playbook ]; then ansible-playbook playbooks/down.yml; else echo "Nothing to stop: no .venv"; fi

clean: down
	rm -rf .state .cache
