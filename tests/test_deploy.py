"""deploy/: what can be checked without docker or a cluster (they are not available here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from approval_gate.policy import load_policy
from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.schema_wait import MIGRATION_JOB
from plangate.signing_keys import load_signer, read_public_key
from tests.compose import ComposeError, interpolate

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
        assert container["args"][:2] == ["worker", stage]
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

    assert container["args"][:5] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
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


# --- what each container is given, checked against what its environment names ---------------

WORKER_NAMES = {f"plangate-{stage}" for stage in STAGES}
# Variables that name a file or a folder the process reads (or writes, for a data folder).
PATH_SUFFIXES = ("_FILE", "_DIR")


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kubernetes_objects() if o["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod template (Deployments and Jobs), by its owner's name."""
    owners = {**by_kind("Deployment"), **by_kind("Job")}
    return {name: o["spec"]["template"]["spec"] for name, o in owners.items()}


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: its ConfigMaps' values first, then its own `env`."""
    configmaps = by_kind("ConfigMap")
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])})
    return env


def secret_keys(name: str) -> set[str]:
    secret = by_kind("Secret")[name]
    return {*secret.get("stringData", {}), *secret.get("data", {})}


def volume_files(volume: dict[str, Any]) -> set[str] | None:
    """The files a ConfigMap or Secret volume holds (None: a volume of any content)."""
    if "configMap" in volume:
        source = volume["configMap"]
        keys = set(by_kind("ConfigMap")[source["name"]]["data"])
    elif "secret" in volume:
        source = volume["secret"]
        keys = secret_keys(source["secretName"])
    else:
        return None
    items = source.get("items")
    return {i["path"] for i in items} if items else keys


def relative_to_mount(path: str, mount_path: str) -> str | None:
    """`path` relative to a mount point ("." for the mount point itself), else None."""
    if path == mount_path:
        return "."
    prefix = mount_path.rstrip("/") + "/"
    return path.removeprefix(prefix) if path.startswith(prefix) else None


def mounted_path(pod: dict[str, Any], container: dict[str, Any], path: str) -> bool:
    """Whether `path` is (or is inside) a mount of the container that holds it."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        relative = relative_to_mount(path, mount["mountPath"])
        if relative is None:
            continue
        files = volume_files(volumes[mount["name"]])
        return files is None or relative == "." or relative in files
    return False


def test_every_file_a_kubernetes_container_is_told_about_is_mounted_in_it() -> None:
    """Given each container's environment (its ConfigMaps' and its own), every variable that
    names a file or folder (`*_FILE`, `*_DIR`) names one mounted in that container, and a file
    from a ConfigMap or Secret is one the mount carries."""
    checked = 0
    for owner, pod in pod_specs().items():
        for container in pod["containers"]:
            for name, value in container_env(container).items():
                if name.endswith(PATH_SUFFIXES) and isinstance(value, str):
                    assert mounted_path(pod, container, value), (owner, name, value)
                    checked += 1
    assert checked >= 5  # policy, playbook, signing key, trusted keys, reviewers


def test_every_kubernetes_secret_and_configmap_reference_names_what_is_declared() -> None:
    configmaps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    references = 0
    for owner, pod in pod_specs().items():
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, owner
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secret_keys(ref["name"]), (owner, entry["name"])
                    references += 1
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (owner, volume)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, (owner, volume)
            source = volume.get("secret") or volume.get("configMap")
            if source is None:  # an emptyDir: nothing it names
                continue
            name = source.get("secretName") or source.get("name")
            declared = secret_keys(name) if "secret" in volume else set(configmaps[name]["data"])
            for item in source.get("items", []):
                assert item["key"] in declared, (owner, volume["name"], item["key"])
                references += 1
    assert references >= 8


def test_kubernetes_workers_and_serve_have_liveness_and_readiness_probes() -> None:
    deployments = by_kind("Deployment")
    assert {*WORKER_NAMES, "plangate-serve"} <= set(deployments)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
        assert (live["path"], ready["path"]) == ("/healthz", "/readyz"), name
        assert live["port"] == ready["port"], name
        assert live["port"] in ports, name
        # Longer than the broker's connect timeout: a broker down is a 503 saying so, not a
        # probe timing out (the kubelet's default is 1 s).
        assert container["readinessProbe"]["timeoutSeconds"] > 5, name
        if name in WORKER_NAMES:
            # The worker listens where the probe knocks, on every address (the kubelet is not
            # in the pod).
            env = container_env(container)
            assert env["PLANGATE_METRICS_PORT"] == str(ports[live["port"]]), name
            assert env["PLANGATE_HEALTH_HOST"] == "0.0.0.0", name


def test_kubernetes_serve_has_reviewers_a_session_secret_and_no_key_and_only_the_gate_signs() -> (
    None
):
    pods = pod_specs()
    serve_pod = pods["plangate-serve"]
    (serve,) = serve_pod["containers"]
    env = container_env(serve)
    assert mounted_path(serve_pod, serve, env["PLANGATE_REVIEWERS_FILE"])
    assert env["PLANGATE_SESSION_SECRET"]["secretKeyRef"]["key"] == "session-secret"
    assert "optional" not in env["PLANGATE_SESSION_SECRET"]["secretKeyRef"]
    # Optional, a key left out of the secret opened goal intake to anything in the cluster.
    assert env["PLANGATE_INTAKE_TOKEN"]["secretKeyRef"]["key"] == "intake-token"
    assert "optional" not in env["PLANGATE_INTAKE_TOKEN"]["secretKeyRef"]
    assert "PLANGATE_POLICY_FILE" not in env
    assert "PLANGATE_SIGNING_KEY_FILE" not in env
    # Who sees the signing Secret, and which of its files.
    seen = {}
    for owner, pod in pods.items():
        for volume in pod.get("volumes", []):
            if volume.get("secret", {}).get("secretName") == "plangate-signing":
                seen[owner] = {i["key"] for i in volume["secret"]["items"]}
        for container in pod["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef", {})
                assert ref.get("name") != "plangate-signing", (owner, entry["name"])
    assert seen == {"plangate-gate": {"signing.key"}}


def test_no_kubernetes_pod_is_given_variables_of_its_services() -> None:
    """Kubernetes gives every pod variables named after each Service (PLANGATE_SERVE_PORT
    for plangate-serve), which plangate warned of at every start and command; a Service named
    plangate-metrics would set PLANGATE_METRICS_PORT to tcp://... and stop every worker."""
    for owner, pod in pod_specs().items():
        assert pod.get("enableServiceLinks") is False, owner


def test_kubernetes_trusted_keys_are_a_secret_of_public_keys_gate_and_executor_mount_whole() -> (
    None
):
    """Given the manifests, every trusted key is a `.pub` entry of one Secret, which executors
    and the gate mount whole as their trusted keys folder: a rotation adds the new key there
    and keeps the old one. Executors mounted one entry as `gate.pub`, so an updated Secret
    replaced the old key and approvals it had signed waited for ever; the gate mounted none,
    and warned at every start that its key was not trusted.
    """
    assert all(name.endswith(".pub") for name in secret_keys("plangate-trusted-keys"))
    pods = pod_specs()
    for owner in ("plangate-gate", "plangate-executor"):
        pod = pods[owner]
        (container,) = pod["containers"]
        folder = container_env(container)["PLANGATE_TRUSTED_KEYS_DIR"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        source = volumes[mount["name"]]["secret"]
        assert source["secretName"] == "plangate-trusted-keys", owner
        assert "items" not in source, owner  # every key the Secret holds, the new and the old


# --- the same for compose ---------------------------------------------------------------------


def compose_services() -> dict[str, dict[str, Any]]:
    (compose,) = documents(DEPLOY / "docker-compose.yml")
    return {name: spec for name, spec in compose["services"].items() if "build" in spec}


def compose_mount_targets(service: dict[str, Any]) -> list[str]:
    return [entry.split(":")[1] for entry in service.get("volumes", [])]


def test_every_file_a_compose_service_is_told_about_is_one_of_its_volumes() -> None:
    checked = 0
    for name, service in compose_services().items():
        targets = compose_mount_targets(service)
        for variable, value in service.get("environment", {}).items():
            if variable.endswith(PATH_SUFFIXES):
                assert any(
                    value == target or value.startswith(target.rstrip("/") + "/")
                    for target in targets
                ), (name, variable, value)
                checked += 1
    assert checked >= 4  # the gate's policy and keys, the executor's keys, serve's reviewers


def test_compose_serve_has_reviewers_a_session_secret_and_no_key() -> None:
    services = compose_services()
    serve = services["serve"]
    env = serve["environment"]

    assert env["PLANGATE_REVIEWERS_FILE"] == "/etc/plangate/reviewers.yaml"
    assert "./reviewers.yaml:/etc/plangate/reviewers.yaml:ro" in serve["volumes"]
    assert env["PLANGATE_SESSION_SECRET"].startswith("${PLANGATE_SESSION_SECRET:?")
    assert not {"PLANGATE_POLICY_FILE", "PLANGATE_SIGNING_KEY_FILE"} & set(env)
    assert not any(v.split(":")[0] in {"gate-data", "keys"} for v in serve["volumes"])
    # Only the gate has a writable data volume, and the keys volume read-write.
    for name, service in services.items():
        volumes = service.get("volumes", [])
        assert ("gate-data:/data" in volumes) == (name == "gate"), name
        assert ("keys:/keys" in volumes) == (name == "gate"), name


def test_compose_healthchecks_probe_the_port_each_service_listens_on() -> None:
    services = compose_services()
    for name in (*STAGES, "serve"):
        service = services[name]
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "plangate.health"], name
        if name == "serve":
            port = service["command"][service["command"].index("--port") + 1]
            assert test[4] == f"http://127.0.0.1:{port}/readyz"
        else:
            assert (
                test[4]
                == f"http://127.0.0.1:{service['environment']['PLANGATE_METRICS_PORT']}/readyz"
            )


def test_compose_refuses_to_start_without_a_session_secret() -> None:
    raw = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))

    with pytest.raises(ComposeError, match=r"PLANGATE_SESSION_SECRET.*deploy/README\.md"):
        interpolate(raw, {})
    resolved = interpolate(raw, {"PLANGATE_SESSION_SECRET": "s" * 48})
    assert resolved["services"]["serve"]["environment"]["PLANGATE_SESSION_SECRET"] == "s" * 48
    assert resolved["services"]["serve"]["environment"]["PLANGATE_INTAKE_TOKEN"] == ""


def test_the_reviewers_file_and_the_env_file_are_kept_out_of_git() -> None:
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()
    assert {"reviewers.yaml", ".env"} <= set(ignored)


def exported_metrics(folder: Path) -> set[str]:
    """The names of the series a scrape of a plangate worker shows (a store of its own in
    `folder`), its consumer's broker gauge included."""
    from prometheus_client.parser import text_string_to_metric_families

    from plangate import metrics
    from plangate.store import open_store

    metrics.broker_up("planner", True)  # as a worker's consumer does once it consumes

    store = open_store(f"sqlite:///{folder / 'metrics.db'}")
    try:
        text = metrics.exposition(metrics.registry_with(store)).decode()
    finally:
        store.close()
    families = list(text_string_to_metric_families(text))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {f.name + end for f in families for end in suffixes.get(f.type, ("",))}


def test_the_grafana_dashboard_charts_only_metrics_plangate_exports(tmp_path: Path) -> None:
    """Every metric a panel queries is one that a scrape of plangate shows."""
    import json
    import re

    exported = exported_metrics(tmp_path)
    dashboard = json.loads((DEPLOY / "grafana" / "plangate-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"plangate_[a-z_]+", target["expr"])
    }
    assert queried, "the dashboard charts nothing"
    assert queried <= exported, queried - exported
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])


def test_the_grafana_dashboard_charts_every_signal_an_alert_pages_on_each_with_its_unit() -> None:
    """An on-call paged by an alert finds its signal on the dashboard: the broker's and the
    store's `up`, the span export, the oldest waiting goals had no panel, and no panel said
    its unit (seconds read as a bare number)."""
    import json
    import re

    def read(expressions: list[str]) -> set[str]:
        return {name for e in expressions for name in re.findall(r"\b(plangate_[a-z_]+|up)\b", e)}

    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    paged = read([rule["expr"] for group in alerts["groups"] for rule in group["rules"]])
    dashboard = json.loads((DEPLOY / "grafana" / "plangate-dashboard.json").read_text())
    charted = read([t["expr"] for panel in dashboard["panels"] for t in panel["targets"]])
    assert paged <= charted, sorted(paged - charted)
    for panel in dashboard["panels"]:
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids


def test_prometheus_scrapes_each_compose_worker_and_serve_where_they_serve_metrics() -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    expected = {
        f"{stage}:{compose['services'][stage]['environment']['PLANGATE_METRICS_PORT']}"
        for stage in STAGES
    }
    serve = compose["services"]["serve"]["command"]
    expected.add(f"serve:{serve[serve.index('--port') + 1]}")
    assert targets == expected
    for stage in STAGES:
        assert compose["services"][stage]["environment"]["PLANGATE_HEALTH_HOST"] == "0.0.0.0"


def test_every_plangate_process_is_given_as_long_to_stop_in_compose_as_in_kubernetes() -> None:
    """Given a worker holding a tool call, SIGTERM lets it finish; compose's default 10 s then
    SIGKILLed it mid-call (a write left of unknown outcome). Every plangate service waits as
    long as its Kubernetes pod does."""
    grace = {pod.get("terminationGracePeriodSeconds", 30) for pod in pod_specs().values()}
    for name, service in compose_services().items():
        if service.get("restart") == "no":
            continue  # a one-off command (the migration, submit): nothing to finish
        waited = service.get("stop_grace_period", "10s")
        assert waited.endswith("s"), (name, waited)
        assert int(waited[:-1]) >= max(grace), (name, waited)


def test_the_migration_job_makes_way_for_the_next_release() -> None:
    """A Job's pod template is immutable: the next release's `kubectl apply -k` with a new
    image was refused, or found the Job complete and ran no `db upgrade` at all. It deletes
    itself once done, so each apply makes it anew."""
    (job,) = by_kind("Job").values()

    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 24 * 3600


def test_kubernetes_workers_and_serve_wait_for_the_migration_job_applied_with_them() -> None:
    """`kubectl apply -k` creates the migration Job and the Deployments together, nothing
    ordering them: on a new database every worker and serve exited 2 and was restarted with a
    back-off (CrashLoopBackOff) that outlasted the Job. Each waits for it instead, longer than
    the Job takes, and names it rightly when it did not come."""
    deployments = by_kind("Deployment")
    (job,) = by_kind("Job").values()

    assert job["metadata"]["name"] == MIGRATION_JOB  # the name a worker's error tells to look at
    for name in {*WORKER_NAMES, "plangate-serve"}:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert "--wait-for-schema" in args, name
        assert int(args[args.index("--wait-for-schema") + 1]) >= 300, name


def test_the_example_policy_is_the_built_in_one_rule_for_rule(tmp_path: Path) -> None:
    """policy.md says the default policy is the same as deploy/policy.yaml; the deployments'
    copy had lost the rule that holds writes steered by untrusted data, so an operator who
    started from it lost that hold."""
    from importlib import resources

    from approval_gate.policy import Policy

    deployed = Policy.load(DEPLOY / "policy.yaml")
    built_in = Policy.load(Path(str(resources.files("approval_gate") / "default_policy.yaml")))

    def rules(policy: Policy) -> list[tuple[object, ...]]:
        return [
            (r.name, r.match, r.action, r.reason, r.requires_role, r.preview, r.approvals)
            for r in policy.rules
        ]

    assert rules(deployed) == rules(built_in)
    assert deployed.mode == built_in.mode


def test_the_alert_rules_read_only_metrics_plangate_exports_and_prometheus_loads_them(
    tmp_path: Path,
) -> None:
    """An SRE found no alert shipped: nothing would fire for a dead letter, a step waiting for
    a person, the store or the audit sealing down. Every metric an alert reads is one a
    scrape of plangate shows (or Prometheus' own `up`), every alert says what to do, and
    prometheus.yml loads the file."""
    import re

    exported = exported_metrics(tmp_path)
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [rules_file] = scrape["rule_files"]
    groups = yaml.safe_load((DEPLOY / "prometheus" / rules_file).read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    read = {name for rule in alerts for name in re.findall(r"plangate_[a-z_]+", rule["expr"])}

    assert len(alerts) >= 6
    assert read <= exported, read - exported
    for rule in alerts:
        promql_parser.parse(rule["expr"])  # raises, naming the fault, where Prometheus would
    # And a gate deciding with an older policy than its file's (an emergency rule that did
    # not compile was said in one log line, and then nothing).
    needed = ("plangate_store_up", "plangate_audit_sealing_stopped", "plangate_goals")
    for name in (*needed, "plangate_policy_file_unusable"):
        assert name in read
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_every_kubernetes_pod_serving_metrics_is_annotated_for_the_scrape() -> None:
    """serve counts a person's decisions, but its pod was not annotated: on Kubernetes, the
    dashboard's Decisions panel showed the policy's alone."""
    owners = by_kind("Deployment")
    for name, deployment in owners.items():
        template = deployment["spec"]["template"]
        ports = {
            port["containerPort"]
            for container in template["spec"]["containers"]
            for port in container.get("ports", [])
        }
        env = {k: v for c in template["spec"]["containers"] for k, v in container_env(c).items()}
        served = {int(env["PLANGATE_METRICS_PORT"])} if "PLANGATE_METRICS_PORT" in env else ports
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert int(annotations["prometheus.io/port"]) in served, name


def test_the_pod_scrape_labels_nothing_plangates_own_series_label(tmp_path: Path) -> None:
    """The `kubernetes-pods` job set a target label `stage`, which plangate's series carry too:
    Prometheus renamed theirs `exported_stage`, and the alerts and dashboard, summing `by
    (stage)`, read the pod's label instead. The pod's name is kept, for the alerts to name."""
    from prometheus_client.parser import text_string_to_metric_families

    from plangate import metrics
    from plangate.store import open_store

    store = open_store(f"sqlite:///{tmp_path / 'metrics.db'}")
    try:
        metrics.MESSAGES.labels("planner", "goal.submitted", "handled")
        text = metrics.exposition(metrics.registry_with(store)).decode()
    finally:
        store.close()
    own = {
        label
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for label in sample.labels
    }
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [pods] = [job for job in scrape["scrape_configs"] if job["job_name"] == "kubernetes-pods"]
    set_here = {
        rule["target_label"]
        for rule in pods["relabel_configs"]
        if not rule.get("target_label", "__").startswith("__")
    }

    assert "stage" in own
    assert set_here, "the job sets no label of its own"
    assert not set_here & own, set_here & own
    assert "pod" in set_here


def test_a_stage_with_no_process_at_all_raises_an_alert() -> None:
    """A stage scaled to nothing has no `up` series to be 0: nothing fired. Each stage's own
    series are absent then, and an alert asks for each stage by name."""
    import re

    from plangate.bus.topology import STAGE_BINDINGS

    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    [missing] = [r for g in groups for r in g["rules"] if r["alert"] == "PlangateStageMissing"]
    asked = re.findall(r'absent\(plangate_messages_total\{stage="(\w+)"\}\)', missing["expr"])

    promql_parser.parse(missing["expr"])
    assert sorted(asked) == sorted(STAGE_BINDINGS)


def test_a_stage_whose_only_process_is_down_pages_once_not_twice() -> None:
    """When a stage's only process died, its failed scrape made `absent` of its series true at
    once: PlangateStageMissing went pending with PlangateProcessDown, two critical pages for
    one dead executor. Each stage's `absent` is left out while a target of that stage has an
    `up` of 0, and every target, in compose's static jobs as on Kubernetes, is labelled with
    its stage as `component`."""
    import re

    from plangate.bus.topology import STAGE_BINDINGS

    expr = str(promql_parser.parse(alert("PlangateStageMissing")["expr"]))
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    static = {
        target: static.get("labels", {}).get("component")
        for job in scrape["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    [pods] = [job for job in scrape["scrape_configs"] if job["job_name"] == "kubernetes-pods"]
    workers = {
        name: deployment["spec"]["template"]["metadata"]["labels"]
        for name, deployment in by_kind("Deployment").items()
    }

    for stage in STAGE_BINDINGS:
        excluded = (
            rf'\(absent\(plangate_messages_total\{{stage="{stage}"\}}\) '
            rf'unless on \(\) up\{{component="{stage}"\}} == 0\)'
        )
        assert re.search(excluded, expr), stage
        assert [c for t, c in static.items() if t.startswith(f"{stage}:")] == [stage]
        assert stage in [labels.get("app.kubernetes.io/component") for labels in workers.values()]
    assert {
        "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
        "target_label": "component",
    } in pods["relabel_configs"]


def alert(name: str) -> dict[str, Any]:
    """The rule of alerts.yml named `name`."""
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r["alert"] == name]
    return rule


def test_traces_lost_fires_on_an_outage_under_light_traffic() -> None:
    """PlangateTracesLost read `increase(plangate_spans_dropped_total[2m])`, 0 between goals
    arriving every 150 s: in 9 minutes of a collector down it went pending and cleared, and
    never fired. It reads the process's state, 1 from a failed export until one succeeds,
    and holds it 5 minutes; the spans lost are still counted."""
    lost = alert("PlangateTracesLost")

    assert "plangate_span_export_failing" in lost["expr"]
    assert 'increase(plangate_spans_dropped_total{reason="queue_full"}' in lost["expr"]
    assert "increase(plangate_spans_dropped_total[" not in lost["expr"]
    assert lost["for"] == "5m"


def test_the_commands_an_alert_gives_that_decide_name_the_server_they_go_through() -> None:
    """PlangateGoalsNeedAttention said `plangate review settle`, which an on-call ran as
    written and got "without --server, a reviewer token is checked against the reviewers
    file". Every deciding command an alert gives names `--server URL`, and where the reviewer
    token goes."""
    import re

    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    deciding = re.compile(
        r"`(plangate (?:review (?:settle|approve|reject)|goals (?:retry|cancel))[^`]*)`"
    )
    given = {
        rule["alert"]: deciding.findall(" ".join(rule["annotations"]["description"].split()))
        for group in groups
        for rule in group["rules"]
    }

    assert given["PlangateGoalsNeedAttention"], "no settle command"
    for name, commands in given.items():
        for command in commands:
            assert "--server URL" in command, (name, command)
    attention = alert("PlangateGoalsNeedAttention")["annotations"]["description"]
    assert "PLANGATE_REVIEWER_TOKEN" in attention
    assert "PLANGATE_SERVER_URL" in attention


def test_an_alert_that_says_to_verify_the_audit_log_says_where_the_gates_key_comes_from() -> None:
    """PlangateAuditSealingStopped said `plangate audit verify`, which, run with the store's
    and broker's URLs alone, exits 2: the checkpoints' signatures need the gate's public key.
    """
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            description = " ".join(rule["annotations"]["description"].split())
            if "plangate audit verify" in description:
                assert "--key FILE" in description, rule["alert"]
                assert "PLANGATE_TRUSTED_KEYS_DIR" in description, rule["alert"]


# What each kind of plangate process writes in PLANGATE_DATA_DIR (besides /tmp): the gate its
# first signing key and the newest checkpoint it saw, the executor the demo tools' pages. Run
# under a read-only root filesystem (the restricted Pod Security Standard), an executor
# without a volume there failed the example goal's `notify_oncall`: "Read-only file system".
WRITES_ITS_DATA_FOLDER = {"gate": True, "executor": True}


def test_every_kubernetes_container_runs_read_only_and_each_folder_it_writes_is_a_volume() -> None:
    image_data_dir = "/data"  # the Dockerfile's PLANGATE_DATA_DIR
    assert f"ENV PLANGATE_DATA_DIR={image_data_dir}" in (DEPLOY / "Dockerfile").read_text()
    for owner, pod in pod_specs().items():
        assert pod["securityContext"]["runAsNonRoot"] is True, owner
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, owner
            assert context["allowPrivilegeEscalation"] is False, owner
            assert context["capabilities"]["drop"] == ["ALL"], owner
            writable = {
                mount["mountPath"]
                for mount in container.get("volumeMounts", [])
                if not mount.get("readOnly")
            }
            assert "/tmp" in writable, owner
            data_dir = container_env(container).get("PLANGATE_DATA_DIR", image_data_dir)
            if WRITES_ITS_DATA_FOLDER.get(container["name"], False):
                assert data_dir in writable, (owner, data_dir)


def test_the_secrets_placeholder_keys_are_refused_as_placeholders(tmp_path: Path) -> None:
    """Given secret.yaml's placeholder signing key and public key, mounted as a gate and an
    executor would (secret.yaml kept in the kustomization by mistake),
    When each is read,
    Then the refusal says it is deploy/'s placeholder and how to make the key pair: it said
    "Unable to load PEM file ... InvalidByte(22, 58)", naming no cause.
    """
    secrets = {o["metadata"]["name"]: o for o in kubernetes_objects() if o["kind"] == "Secret"}
    private = tmp_path / "signing.key"
    private.write_text(secrets["plangate-signing"]["stringData"]["signing.key"])
    public = tmp_path / "gate.pub"
    public.write_text(secrets["plangate-trusted-keys"]["stringData"]["gate.pub"])
    settings = Settings(data_dir=tmp_path / "data", signing_key_file=private)

    with pytest.raises(ConfigError, match="still deploy/'s placeholder: make the key pair"):
        load_signer(settings)
    with pytest.raises(ConfigError, match="still deploy/'s placeholder"):
        read_public_key(public)
