"""deploy/kubernetes, run for real: every plangate pod of the kustomization as a local process.

No cluster runs here, so `tests.kubernetes` starts each pod of the Deployments and the Job with
exactly its container's args, environment, volumes and probes (see its docstring for what is
mapped, and how), against a real Redis, PostgreSQL (a `plangate` role and database) and an OTLP
receiver for `jaeger-collector`. The Secrets are filled as deploy/README.md tells an operator:
a key pair made with openssl, a reviewer made with `plangate reviewers add`, a session secret
and an intake token from `secrets.token_urlsafe`, the placeholders of secret.yaml replaced.

As `kubectl apply -k` would, the Deployments start with nothing ordering them: they wait for
the migration Job alive and not ready, and become ready once it has run. Then what a team sees:
intake refuses a goal without the token and runs a read-only one; a writing goal is held and
runs once a reviewer approves it through serve's API; a rolling restart of the gate and the
executors (new pods ready, the old ones SIGTERMed) while an approved goal is in flight finishes
it once; the pods stop within their grace, wrote nothing on their read-only root filesystems,
and the workers sent their spans to the collector.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import SEED_GOAL
from tests.deployments import DEPLOY, READ_ONLY_GOAL, ServeReplicas, add_reviewer, call
from tests.kubernetes import Cluster, Pod
from tests.support import eventually

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(180),
]

WORKERS = ("plangate-planner", "plangate-gate", "plangate-executor")
MIGRATION = "plangate-db-upgrade"
PLACEHOLDERS = ("CHANGE-ME", "REPLACE")


# --- what an operator does before `kubectl apply -k` (deploy/README.md) --------------------


def openssl(*args: str) -> None:
    made = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr


def fill_secrets(path: Path, values: dict[str, dict[str, str]]) -> None:
    """Replace every value of secret.yaml's Secrets by the operator's (the same keys)."""
    filled = []
    for secret in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        name = secret["metadata"]["name"]
        assert set(secret["stringData"]) == set(values[name]), name
        filled.append({**secret, "stringData": values[name]})
    path.write_text(yaml.safe_dump_all(filled, sort_keys=False), encoding="utf-8")
    assert not any(mark in path.read_text(encoding="utf-8") for mark in PLACEHOLDERS)


@dataclass
class Deployment(ServeReplicas):
    """The running cluster and the secrets made for it."""

    cluster: Cluster
    intake_token: str
    alice: str  # a reviewer's token
    spans: Path  # what "jaeger-collector" received
    operator: Path  # the operator's folder: keys, reviewers.yaml

    def url(self, replica: int) -> str:
        serve = self.cluster.pods["plangate-serve"][replica - 1]
        return f"http://127.0.0.1:{serve.port(8080)}"

    def held(self, text: str = SEED_GOAL) -> dict[str, Any]:
        """Submit `text` (the seed goal) and return its goal's state once held."""
        return super().held(text)

    def approve(self, plan_id: str, token: str) -> None:
        """Approve a held plan through serve's review API (on the second replica)."""
        review = f"{self.url(2)}/api/v1/reviews/{plan_id}"
        status, plan = call(review, token=token)
        assert status == 200, plan
        status, answer = call(f"{review}/approve", "POST", {"plan_hash": plan["plan_hash"]}, token)
        assert status in (200, 202), answer

    def notifications(self) -> int:
        """How many pages the demo notify_oncall sent, in every executor pod's /data."""
        files = [
            pod.host_path("/data") / "notifications.jsonl"
            for pod in self.cluster.pods["plangate-executor"]
        ]
        return sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files if f.exists())


@pytest.fixture
def deployment(
    tmp_path: Path,
    redis_url: str,
    postgres_address: str,
    otlp_receiver: tuple[str, Path],
) -> Iterator[Deployment]:
    """The kustomization with its Secrets filled in, read as a cluster; no pod started yet."""
    with redis.Redis.from_url(redis_url) as queues:
        queues.flushdb()  # what an earlier deployment test left queued (the same namespace)
    operator = tmp_path / "operator"
    operator.mkdir()
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(operator / "signing.key"))
    openssl(
        "pkey", "-in", str(operator / "signing.key"), "-pubout", "-out", str(operator / "gate.pub")
    )
    alice = add_reviewer(operator / "reviewers.yaml", operator, "alice")
    intake_token = secrets.token_urlsafe(32)
    manifests = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY / "kubernetes", manifests)
    fill_secrets(
        manifests / "secret.yaml",
        {
            "plangate-secrets": {
                "database-url": "postgresql+psycopg://plangate:plangate@postgres:5432/plangate",
                "intake-token": intake_token,
                "session-secret": secrets.token_urlsafe(48),
                "openai-api-key": "",
            },
            "plangate-signing": {"signing.key": (operator / "signing.key").read_text()},
            "plangate-trusted-keys": {"gate.pub": (operator / "gate.pub").read_text()},
            "plangate-reviewers": {"reviewers.yaml": (operator / "reviewers.yaml").read_text()},
        },
    )
    redis_address = make_url(redis_url)
    cluster = Cluster(
        manifests / "kustomization.yaml",
        tmp_path / "cluster",
        dockerfile=DEPLOY / "Dockerfile",
        image="plangate",
        addresses={
            "redis:6379": f"{redis_address.host}:{redis_address.port}",
            "postgres:5432": postgres_address,
            "jaeger-collector:4318": otlp_receiver[0],
        },
    )
    # jaeger-query is only where `plangate trace` links to: nothing connects to it.
    assert cluster.addresses_named() == {*cluster.addresses, "jaeger-query:16686"}
    try:
        yield Deployment(cluster, intake_token, alice, otlp_receiver[1], operator)
    finally:
        cluster.down()


# --- the test -------------------------------------------------------------------------------


def scaler_queue_length(deployment: Deployment) -> int:
    """The length of the Redis list keda-scaledobject.yaml scales the executors on."""
    (scaled,) = yaml.safe_load_all((DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text())
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    address = deployment.cluster.addresses[trigger["metadata"]["address"]]
    with redis.Redis.from_url(f"redis://{address}/0") as queues:
        return int(queues.llen(trigger["metadata"]["listName"]))


def waits_for_the_migration(pod: Pod) -> bool:
    """Probe a pod's readiness: never ready; True once it says it waits for the migration."""
    assert pod.readiness is not None
    status, why = call(f"http://127.0.0.1:{pod.readiness.port}{pod.readiness.path}")
    assert status == 503, (pod.name, why)
    return "waiting for the migration" in str(why)


def test_the_kustomization_runs_as_written(deployment: Deployment) -> None:
    try:
        check_the_deployment(deployment)
    except BaseException:
        print(deployment.cluster.logs())
        raise


def check_the_deployment(deployment: Deployment) -> None:
    cluster = deployment.cluster

    # Given the Deployments applied with the Job, nothing ordering them, and the Job not run,
    # Then every pod is alive (liveness passes) and not ready, saying it waits for the Job.
    assert sorted(cluster.named("Deployment")) == sorted([*WORKERS, "plangate-serve"])
    for name in cluster.named("Deployment"):
        cluster.deploy(name)
    assert len(cluster.pods["plangate-serve"]) == 2  # the manifests' replicas
    for pod in cluster.running():
        cluster.wait_until(pod, "live")
        eventually(partial(waits_for_the_migration, pod), 30, f"{pod.name} saying it waits")

    # When the migration Job runs to completion, Then every pod becomes ready.
    migration = cluster.run_job(MIGRATION, timeout=60)
    assert migration.process is not None
    assert migration.process.returncode == 0
    for pod in cluster.running():
        cluster.wait_until(pod, "ready")
        assert pod.live(), pod.name

    # When a goal is posted to serve's intake without the intake token, Then it is refused;
    # with it, a read-only goal runs to completion unattended.
    url = f"{deployment.url(1)}/api/v1/goals"
    status, answer = call(url, "POST", {"text": READ_ONLY_GOAL})
    assert status == 401, answer
    reading = deployment.goal(deployment.submit(READ_ONLY_GOAL), {"completed", "failed", "held"})
    assert reading["status"] == "completed", reading

    # Given a goal whose plan writes, held, When alice approves it through serve's API (on the
    # other replica), Then it runs once.
    first = deployment.held()
    assert deployment.notifications() == 0
    deployment.approve(first["plan_id"], deployment.alice)
    done = deployment.goal(first["goal_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert deployment.notifications() == 1

    # Given bob added to the reviewers Secret as the docs say (`plangate reviewers add`, the
    # Secret made again from the file) and the kubelet's update of the pods' volumes,
    # When bob approves another held goal, Then serve and the gate (which read the file again,
    # not restarted) take his approval, and it runs once.
    reviewers = deployment.operator / "reviewers.yaml"
    bob = add_reviewer(reviewers, deployment.operator, "bob")
    second = deployment.held()
    cluster.update("Secret", "plangate-reviewers", {"reviewers.yaml": reviewers.read_text()})
    deployment.approve(second["plan_id"], bob)
    done = deployment.goal(second["goal_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert deployment.notifications() == 2

    # Given another held goal, When the gate and the executors are rolled as it is approved (a
    # new pod of each ready, then every old one sent SIGTERM at once, the approval on its way
    # through the gate and an executor: wherever it is then, queued or running), Then the old
    # pods exit 0 within their grace and the goal runs once.
    third = deployment.held()
    old = [pod for name in ("plangate-gate", "plangate-executor") for pod in cluster.pods[name]]
    for name in ("plangate-gate", "plangate-executor"):
        cluster.wait_until(cluster.start(name), "ready")
    deployment.approve(third["plan_id"], deployment.alice)
    stopped = cluster.stop(*old)
    assert set(stopped.values()) == {0}, stopped
    done = deployment.goal(third["goal_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert deployment.notifications() == 3

    # Given no executor running (a KEDA ScaledObject would start one: keda-scaledobject.yaml,
    # applied on its own), When a read-only goal is approved by the policy, Then the Redis list
    # that ScaledObject watches holds its run; and once an executor starts, it completes.
    cluster.stop(*cluster.pods["plangate-executor"])
    waiting = deployment.submit(READ_ONLY_GOAL)
    assert deployment.goal(waiting, {"approved", "running", "completed"})["status"] == "approved"
    assert scaler_queue_length(deployment) >= 1
    cluster.wait_until(cluster.start("plangate-executor"), "ready")
    assert deployment.goal(waiting, {"completed", "failed"})["status"] == "completed"

    # Then every pod stops within its grace, none wrote on its read-only root filesystem, and
    # the three workers sent their spans to the collector.
    codes = cluster.down()
    assert set(codes.values()) == {0}, codes
    for pods in cluster.pods.values():
        for pod in pods:
            assert pod.read_only_root, pod.name
            assert pod.root_writes() == [], pod.name
    spans = [json.loads(line) for line in deployment.spans.read_text().splitlines()]
    assert {f"plangate-{name.split('-')[1]}" for name in WORKERS} <= {s["service"] for s in spans}
