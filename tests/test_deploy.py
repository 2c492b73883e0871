"""deploy/: what can be checked without docker or a cluster (they are not available here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from approval_gate.policy import load_policy
from plangate.config import Settings

DEPLOY = Path(__file__).parent.parent / "deploy"
STAGES = ("planner", "gate", "executor")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def kubernetes_objects() -> list[dict[str, Any]]:
    objects = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        objects += [doc for doc in documents(path) if doc.get("kind") != "Kustomization"]
    return objects


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: p.name)
def test_every_yaml_file_parses(path: Path) -> None:
    assert documents(path)


def test_the_dockerfile_is_slim_non_root_and_runs_plangate() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11-slim" in text
    assert "USER 10001" in text
    assert "pip install ." in text
    assert 'ENTRYPOINT ["plangate"]' in text


def test_compose_runs_the_servers_a_migration_and_one_worker_of_each_stage() -> None:
    (compose,) = documents(DEPLOY / "docker-compose.yml")
    services = compose["services"]

    assert {"redis", "postgres", "jaeger", "migrate", *STAGES} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert "4318:4318" in services["jaeger"]["ports"]
    for stage in STAGES:
        service = services[stage]
        assert service["command"] == ["worker", stage]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        env = service["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
        assert env["OTEL_SERVICE_NAME"] == f"plangate-{stage}"
        assert env["PLANGATE_BROKER_URL"].startswith("redis://redis")
        assert env["PLANGATE_DATABASE_URL"].startswith("postgresql+psycopg://")
    # The gate publishes its public key into the volume the executor trusts, read-only.
    assert "keys:/keys" in services["gate"]["volumes"]
    assert "keys:/keys:ro" in services["executor"]["volumes"]
    assert services["executor"]["environment"]["PLANGATE_TRUSTED_KEYS_DIR"] == "/keys/trusted"


def test_every_kubernetes_object_is_named_and_typed() -> None:
    for obj in kubernetes_objects():
        assert obj["apiVersion"], obj
        assert obj["kind"], obj
        assert obj["metadata"]["name"], obj


def test_kubernetes_has_a_deployment_per_worker_kind_and_a_migration_job() -> None:
    objects = kubernetes_objects()
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for stage in STAGES:
        spec = deployments[f"plangate-{stage}"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        (container,) = spec["template"]["spec"]["containers"]
        assert container["image"]
        assert container["args"] == ["worker", stage]
    (job,) = [o for o in objects if o["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"]
    assert container["args"] == ["db", "upgrade"]
    kinds = {o["kind"] for o in objects}
    assert {"ConfigMap", "Secret", "ScaledObject"} <= kinds


def test_kustomization_lists_files_that_exist() -> None:
    (kustomization,) = documents(DEPLOY / "kubernetes" / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource).is_file(), resource


def test_the_example_policy_loads_and_the_configmap_carries_it(tmp_path: Path) -> None:
    policy = load_policy(Settings(data_dir=tmp_path, policy_file=DEPLOY / "policy.yaml"))
    configmaps = {
        o["metadata"]["name"]: o for o in kubernetes_objects() if o["kind"] == "ConfigMap"
    }
    mounted = configmaps["plangate-policy"]["data"]

    assert policy.version
    assert mounted["policy.yaml"] == (DEPLOY / "policy.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(mounted["playbook.yaml"])["playbooks"]


def test_compose_serves_the_http_api_on_8080() -> None:
    (compose,) = documents(DEPLOY / "docker-compose.yml")
    serve = compose["services"]["serve"]

    assert serve["command"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert "8080:8080" in serve["ports"]
    assert serve["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    env = serve["environment"]
    assert env["OTEL_SERVICE_NAME"] == "plangate-serve"
    assert env["PLANGATE_BROKER_URL"].startswith("redis://redis")
    assert "PLANGATE_INTAKE_TOKEN" in env


def test_kubernetes_serves_the_http_api_behind_a_service() -> None:
    objects = kubernetes_objects()
    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "plangate-serve"
    ]
    (service,) = [o for o in objects if o["kind"] == "Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    token = {e["name"]: e for e in container["env"]}["PLANGATE_INTAKE_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True
    # The Service reaches exactly the serve pods, on the container's named port.
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"][0]["targetPort"] == "http"


# Custom resources have no schema in kubernetes-validate; KEDA's is checked for shape above.
_CUSTOM_KINDS = {"ScaledObject", "Kustomization"}


@pytest.mark.parametrize(
    "manifest",
    [m for m in kubernetes_objects() if m.get("kind") not in _CUSTOM_KINDS],
    ids=lambda m: f"{m['kind']}/{m['metadata']['name']}",
)
def test_every_kubernetes_object_validates_against_the_kubernetes_schema(
    manifest: dict[str, Any],
) -> None:
    """Given a manifest of a built-in kind, it validates strictly (no unknown fields)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)
