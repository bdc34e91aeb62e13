#!/usr/bin/env bash
# Makes sure RabbitMQ (5672) and PostgreSQL (5432) answer on localhost:
# if either does not, starts both with docker compose and waits for health.
set -euo pipefail
cd "$(dirname "$0")/.."

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if answers 5672 && answers 5432; then
  exit 0
fi
echo "RabbitMQ or PostgreSQL is not answering on localhost; starting them with docker compose" >&2
if ! docker compose version >/dev/null 2>&1; then
  echo "error: docker compose is not available. Start RabbitMQ on 127.0.0.1:5672 (guest/guest)" >&2
  echo "and PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) yourself." >&2
  exit 1
fi
docker compose up -d --wait rabbitmq postgres
