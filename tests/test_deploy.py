"""docs/deploy/: the compose file, the Kubernetes manifests and the systemd unit
say what docs/deploy/README.md says of them (issue 16). Docker and a cluster
are not available here: these are checks of syntax and of agreement with
keygate's settings, not a deployment."""

from __future__ import annotations

import configparser
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from keygate.config import load_settings
from keygate.config.settings import AuthSettings, ServerSettings, StoreSettings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "docs" / "deploy"
# Its words with line breaks as spaces, to find phrases in.
README = " ".join((DEPLOY / "README.md").read_text().split())
# Variables keygate reads besides one per setting.
OTHER_VARIABLES = {"KEYGATE_CONFIG", "KEYGATE_LOG_LEVEL"}


def setting_variables() -> set[str]:
    names = set(OTHER_VARIABLES)
    for section, cls in (("SERVER", ServerSettings), ("STORE", StoreSettings),
                         ("AUTH", AuthSettings)):
        names |= {f"KEYGATE_{section}_{f.name.upper()}" for f in dataclasses.fields(cls)}
    return names


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}``, with the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def check_environment(env: dict[str, str]) -> None:
    """Every KEYGATE_* variable names a setting, and together they load."""
    unknown = {k for k in env if k.startswith("KEYGATE_")} - setting_variables()
    assert not unknown, f"not keygate settings: {sorted(unknown)}"
    load_settings(None, env)  # a ConfigError names a bad value


# --- docker-compose.yml ---------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_deploy_compose_services_ports_and_store(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"keygate", "postgres"} <= set(services)
    keygate, postgres = services["keygate"], services["postgres"]
    assert "8080:8080" in keygate["ports"]
    env = {k: interpolate(str(v)) for k, v in keygate["environment"].items()}
    assert env["KEYGATE_SERVER_LISTEN"] == "0.0.0.0:8080"
    check_environment(env)
    # The store is the postgres service, with its user, password and database.
    pg_env = {k: interpolate(str(v)) for k, v in postgres["environment"].items()}
    url = env["KEYGATE_STORE_URL"]
    assert url == (
        f"postgresql://{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg_env['POSTGRES_DB']}"
    )
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert keygate["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The routes: --upstream to a service of the file.
    command = keygate["command"]
    assert command[0] == "serve"
    upstream = command[command.index("--upstream") + 1]
    assert re.match(r"http://([a-z]+):\d+$", upstream).group(1) in services  # type: ignore[union-attr]


def test_deploy_compose_stops_after_the_drain_and_checks_ready(compose: dict[str, Any]) -> None:
    keygate = compose["services"]["keygate"]
    grace = int(keygate["stop_grace_period"].rstrip("s"))
    assert grace > ServerSettings().shutdown_timeout
    assert "/_keygate/ready" in " ".join(keygate["healthcheck"]["test"])
    assert keygate["build"]["context"] == "../.."
    assert (DEPLOY / keygate["build"]["context"] / keygate["build"]["dockerfile"]).is_file()
    assert "pgdata" in compose["volumes"]


def test_deploy_readme_states_the_compose_facts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    keygate, postgres = services["keygate"], services["postgres"]
    host_port = keygate["ports"][0].split(":")[0]
    assert f"host port **{host_port}**" in README
    major = postgres["image"].split(":")[1]
    assert f"PostgreSQL {major}" in README
    pg_env = postgres["environment"]
    assert f"user and database `{pg_env['POSTGRES_USER']}`" in README
    assert pg_env["POSTGRES_USER"] == pg_env["POSTGRES_DB"]
    assert "`serve " + " ".join(keygate["command"][1:]) + "`" in README
    assert f"with {keygate['environment']['KEYGATE_SERVER_WORKERS']} workers" in README
    grace = keygate["stop_grace_period"].rstrip("s")
    assert f"`stop_grace_period` are {grace} s" in README


def test_deploy_dockerfile_copies_every_package_folder() -> None:
    # The image installs keygate from these folders (pyproject package-dir).
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    dockerfile = (REPO / "Dockerfile").read_text()
    for folder in {f.split("/")[0] for f in folders.values()}:
        assert re.search(rf"^COPY {folder} \./{folder}$", dockerfile, re.M), folder


# --- kubernetes.yaml ----------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs}


def test_deploy_kubernetes_probes_and_ports(manifests: dict[str, dict[str, Any]]) -> None:
    assert {"ConfigMap", "Deployment", "Service"} <= set(manifests)
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/_keygate/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/_keygate/health"
    ready = container["readinessProbe"]
    assert ready["httpGet"]["path"] == "/_keygate/ready"
    # Ride out a store restart on cached keys: README's 60 s before leaving.
    assert ready["periodSeconds"] * ready["failureThreshold"] == 60
    (port,) = container["ports"]
    assert port["containerPort"] == 8080
    service_port = manifests["Service"]["spec"]["ports"][0]
    assert service_port["targetPort"] == port["name"]
    assert pod["terminationGracePeriodSeconds"] > ServerSettings().shutdown_timeout + 5


def test_deploy_kubernetes_config_map_is_valid_keygate_config(
    manifests: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    path = tmp_path / "keygate.toml"
    path.write_text(manifests["ConfigMap"]["data"]["keygate.toml"])
    settings = load_settings(path, {})
    assert settings.server.listen == "0.0.0.0:8080"
    assert settings.server.port == 8080
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["serve", "--config", "/etc/keygate/keygate.toml"]
    assert container["volumeMounts"][0]["mountPath"] == "/etc/keygate"
    names = {e["name"] for e in container["env"]}
    assert names <= setting_variables()
    assert "KEYGATE_STORE_URL" in names


# --- keygate.service ---------------------------------------------------------------
def test_deploy_systemd_unit_stops_gracefully_and_backs_off() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "keygate.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"].split()[1:3] == ["serve", "--config"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # the parent stops its workers
    assert int(service["TimeoutStopSec"]) > ServerSettings().shutdown_timeout
    assert service["Restart"] == "on-failure"
    assert int(unit["Unit"]["StartLimitBurst"]) >= 1
    env = dict(v.split("=", 1) for v in service["Environment"].split())
    check_environment(env)
