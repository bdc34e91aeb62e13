"""Checks that the compose files agree with config/default.toml: the broker
and database are published on the ports the default URLs use, with the
credentials they carry, and every LIKES__* variable a service sets names a
real setting."""
import sys
import tomllib
from urllib.parse import urlparse

import yaml

with open("config/default.toml", "rb") as f:
    defaults = tomllib.load(f)
amqp = urlparse(defaults["amqp"]["url"])
pg = urlparse(defaults["database"]["url"])
problems = []


def published(service, port):
    return any(str(p).split(":")[-1].split("/")[0] == str(port)
               and (":" not in str(p) or str(p).split(":")[-2] == str(port))
               for p in service.get("ports", []))


def env_of(service):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return env


for path in sys.argv[1:]:
    with open(path) as f:
        compose = yaml.safe_load(f)
    services = compose.get("services", {})
    for name, service in services.items():
        image = service.get("image", "")
        env = env_of(service)
        if image.startswith("rabbitmq") and name == "rabbitmq":
            if not published(service, amqp.port):
                problems.append(f"{path}: {name} does not publish AMQP port {amqp.port}")
            if env.get("RABBITMQ_DEFAULT_USER") != amqp.username or env.get("RABBITMQ_DEFAULT_PASS") != amqp.password:
                problems.append(f"{path}: {name} credentials differ from amqp.url")
        if image.startswith("postgres"):
            if not published(service, pg.port):
                problems.append(f"{path}: {name} does not publish port {pg.port}")
            if env.get("POSTGRES_USER", "postgres") != pg.username:
                problems.append(f"{path}: {name} user differs from database.url")
            if pg.password is None and env.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
                problems.append(f"{path}: database.url has no password but {name} does not trust")
        for key in env:
            if key.startswith("LIKES__"):
                parts = key.split("__")[1:]
                if len(parts) != 2 or parts[1].lower() not in defaults.get(parts[0].lower(), {}):
                    problems.append(f"{path}: {name} sets {key}, which is no setting")
        if "healthcheck" not in service and "image" in service:
            problems.append(f"{path}: {name} has no healthcheck")

for p in problems:
    print(p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"compose files agree with config/default.toml: {', '.join(sys.argv[1:])}")
