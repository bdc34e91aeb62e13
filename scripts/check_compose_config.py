"""Checks that the compose files agree with config/default.toml and with
themselves, beyond what the Compose JSON schema can say:

- the broker and database are published on the ports of the default URLs,
  with the credentials those URLs carry (so `make run` finds them);
- every LIKES__* variable a service sets names a real setting, and the AMQP
  and database URLs it sets point at services of the same file, on their
  container ports, with the same credentials;
- every service that runs a likes binary restarts `unless-stopped` (the
  binaries exit when the broker or database is unreachable at start);
- every service has a health check, every `condition: service_healthy`
  points at a service that has one, and every named volume is declared.
Exits non-zero listing every problem."""
import sys
import tomllib
from urllib.parse import urlparse

import yaml

with open("config/default.toml", "rb") as f:
    defaults = tomllib.load(f)
default_amqp = urlparse(defaults["amqp"]["url"])
default_pg = urlparse(defaults["database"]["url"])


def container_ports(service):
    """(published, target) pairs of a service's `ports`."""
    pairs = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        target = int(parts[-1])
        published = int(parts[-2]) if len(parts) > 1 else None
        pairs.append((published, target))
    return pairs


def env_of(service):
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def check(path):
    problems = []
    with open(path) as f:
        compose = yaml.safe_load(f)
    services = compose.get("services", {})
    declared_volumes = set((compose.get("volumes") or {}).keys())

    def rabbit_credentials(service):
        env = env_of(service)
        user = env.get("RABBITMQ_DEFAULT_USER")
        password = env.get("RABBITMQ_DEFAULT_PASS")
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.endswith(".conf"):
                with open(source) as conf:
                    for line in conf:
                        key, _, value = line.partition("=")
                        if key.strip() == "default_user":
                            user = value.strip()
                        if key.strip() == "default_pass":
                            password = value.strip()
        return user or "guest", password or "guest"

    brokers = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("rabbitmq")}
    databases = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("postgres")}

    if not any((default_amqp.port, 5672) in container_ports(s) for s in brokers.values()):
        problems.append(f"no RabbitMQ service publishes AMQP on port {default_amqp.port}")
    if not any((default_pg.port, 5432) in container_ports(s) for s in databases.values()):
        problems.append(f"no PostgreSQL service publishes port {default_pg.port}")
    for name, service in brokers.items():
        if rabbit_credentials(service) != (default_amqp.username, default_amqp.password):
            problems.append(f"{name}: credentials differ from amqp.url")
    for name, service in databases.items():
        env = env_of(service)
        if env.get("POSTGRES_USER", "postgres") != default_pg.username:
            problems.append(f"{name}: user differs from database.url")
        if default_pg.password is None and env.get("POSTGRES_HOST_AUTH_METHOD") != "trust":
            problems.append(f"{name}: database.url has no password but {name} does not trust")

    for name, service in services.items():
        env = env_of(service)
        for key, value in env.items():
            if not key.startswith("LIKES__"):
                continue
            parts = key.split("__")[1:]
            if len(parts) != 2 or parts[1].lower() not in defaults.get(parts[0].lower(), {}):
                problems.append(f"{name}: sets {key}, which is no setting")
            if key == "LIKES__AMQP__URL":
                for url in value.split(","):
                    u = urlparse(url.strip())
                    if u.hostname not in brokers or u.port != 5672:
                        problems.append(f"{name}: AMQP node {u.hostname}:{u.port} is no broker service of this file")
                    elif (u.username, u.password) != rabbit_credentials(brokers[u.hostname]):
                        problems.append(f"{name}: AMQP credentials differ from {u.hostname}'s")
            if key == "LIKES__DATABASE__URL":
                u = urlparse(value)
                if u.hostname not in databases or u.port != 5432:
                    problems.append(f"{name}: database {u.hostname}:{u.port} is no PostgreSQL service of this file")
                elif u.username != env_of(databases[u.hostname]).get("POSTGRES_USER", "postgres"):
                    problems.append(f"{name}: database user differs from {u.hostname}'s")
        if "healthcheck" not in service:
            problems.append(f"{name}: has no healthcheck")
        command = service.get("command") or []
        runs_likes = bool(command) and str(command[0]).startswith("likes-")
        if runs_likes and service.get("restart") != "unless-stopped":
            # The binaries exit when the broker or database is unreachable
            # at start; the runtime must start them again.
            problems.append(f"{name}: runs {command[0]} without restart: unless-stopped")
        depends = service.get("depends_on", {})
        if isinstance(depends, dict):
            for other, rule in depends.items():
                if other not in services:
                    problems.append(f"{name}: depends on unknown service {other}")
                elif (rule or {}).get("condition") == "service_healthy" and "healthcheck" not in services[other]:
                    problems.append(f"{name}: waits for {other} to be healthy, but it has no healthcheck")
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")) and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared")
    return [f"{path}: {p}" for p in problems]


problems = [p for path in sys.argv[1:] for p in check(path)]
for p in problems:
    print(p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"compose files agree with config/default.toml: {', '.join(sys.argv[1:])}")
