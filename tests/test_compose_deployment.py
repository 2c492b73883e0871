"""deploy/docker-compose.yml, run for real: every plangate service as a local process.

Docker does not run here, so `tests.compose` starts each service the compose file builds
from deploy/Dockerfile with exactly its command, environment and volumes (see its docstring
for what is mapped, and how), against a real Redis, PostgreSQL (a `plangate` role and database,
as the compose file names them) and an OTLP receiver standing in for Jaeger. `serve` runs as
two replicas, as `docker compose up --scale serve=2` would (and a third, for one check).
Reviewers are made with `plangate reviewers add`, the session secret as deploy/README.md says.

Through the deployment: a read-only goal runs unattended; a goal whose plan writes is held by
a rule that requires the `finance` role; a reviewer without it is refused in the page and
nothing runs; one with it loads the plan on replica 1 and the form is posted to replica 2,
and the plan runs once; another goal is approved with the CLI and a token; serve has no policy
file, and a third replica handed one without the rule still requires the role; an approval
recorded on the store by someone with only the executor's settings and a reviewers file of
their own releases nothing. No private key is ever in serve's or the CLI's data folder.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.browser import chromium
from tests.compose import Compose, Instance
from tests.conftest import SEED_GOAL
from tests.deployments import DEPLOY, READ_ONLY_GOAL, ServeReplicas, add_reviewer, call, plangate
from tests.support import eventually

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.timeout(180),
]

WORKERS = ("planner", "gate", "executor")
# PEM private keys of any kind (PKCS#8, OpenSSH, ...), whatever the file is called.
PRIVATE_KEY_MARK = b"PRIVATE KEY-----"


# --- the test's browser, and what an operator does before `docker compose up` -------


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def role_policy(path: Path) -> Path:
    """deploy/policy.yaml with `requires_role: finance` on its rule that holds writes."""
    text = (DEPLOY / "policy.yaml").read_text(encoding="utf-8")
    marked = text.replace(
        "  - name: hold-writes\n", "  - name: hold-writes\n    requires_role: finance\n"
    )
    assert marked.count("requires_role: finance") == 1
    path.write_text(marked, encoding="utf-8")
    return path


# --- talking to the deployment --------------------------------------------------------------


@dataclass
class Deployment(ServeReplicas):
    """The running compose project, its replicas' URLs and the secrets made for it."""

    compose: Compose
    intake_token: str
    alice: str  # has the finance role
    bob: str  # has no role
    policy: Path  # the file bound to ./policy.yaml
    folder: Path
    spans: Path  # what "jaeger" received

    def url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.compose.instances['serve'][replica - 1].port(8080)}"

    def instance(self, service: str) -> Instance:
        (only,) = self.compose.instances[service]
        return only

    def held(self, text: str = SEED_GOAL) -> dict[str, Any]:
        """Submit `text` (the seed goal) and return its goal's state once held."""
        return super().held(text)

    def notifications(self) -> int:
        """How many pages the demo notify_oncall sent (kept in the executor's data folder)."""
        path = self.instance("executor").host_path("/data") / "notifications.jsonl"
        return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0

    def cli(self, *args: str, token: str, data: Path) -> subprocess.CompletedProcess[str]:
        """The CLI on a reviewer's machine: a server URL, a token, its own data folder."""
        return plangate(
            *args, HOME=str(data.parent), PLANGATE_DATA_DIR=str(data), PLANGATE_REVIEWER_TOKEN=token
        )


@pytest.fixture
def deployment(
    tmp_path: Path,
    redis_url: str,
    postgres_address: str,
    otlp_receiver: tuple[str, Path],
) -> Iterator[Deployment]:
    """Every plangate service of deploy/docker-compose.yml running, serve twice, all healthy."""
    operator = tmp_path / "operator"
    operator.mkdir()
    reviewers = operator / "reviewers.yaml"
    alice = add_reviewer(reviewers, operator, "alice", "finance")
    bob = add_reviewer(reviewers, operator, "bob")
    policy = role_policy(operator / "policy.yaml")
    relaxed = operator / "policy-without-the-role.yaml"
    relaxed.write_text(policy.read_text().replace("    requires_role: finance\n", ""))
    intake_token = secrets.token_urlsafe(24)
    compose = Compose(
        DEPLOY / "docker-compose.yml",
        tmp_path / "compose",
        variables={
            # deploy/README.md: python -c "import secrets; print(secrets.token_urlsafe(48))"
            "PLANGATE_SESSION_SECRET": secrets.token_urlsafe(48),
            "PLANGATE_INTAKE_TOKEN": intake_token,
        },
        addresses={
            "redis:6379": f"{make_url(redis_url).host}:{make_url(redis_url).port}",
            "postgres:5432": postgres_address,
            "jaeger:4318": otlp_receiver[0],
        },
        binds={"./policy.yaml": policy, "./reviewers.yaml": reviewers},
    )
    assert sorted(compose.provided()) == ["jaeger", "postgres", "redis"]
    running = Deployment(compose, intake_token, alice, bob, policy, tmp_path, otlp_receiver[1])
    try:
        compose.up(scale={"serve": 2})
        # A third replica, handed a policy file without the role rule (serve reads none).
        compose.add("serve", PLANGATE_POLICY_FILE=str(relaxed))
        compose.all_healthy()
        yield running
    except BaseException:
        print(compose.logs())
        raise
    finally:
        compose.down()


# --- the test -------------------------------------------------------------------------------


def login(browser: Any, base_url: str, token: str) -> Any:
    """A fresh browser session on `base_url`, logged in with `token`; return its page."""
    context = browser.new_context(base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto("/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/reviews")
    return page


def private_keys(folder: Path) -> list[Path]:
    """Every file under `folder` that holds a PEM private key, or is named like one."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and (
            path.suffix in {".pem", ".key"} or PRIVATE_KEY_MARK in path.read_bytes()
        ):
            found.append(path)
    return found


def test_the_compose_file_runs_as_written(deployment: Deployment, browser: Any) -> None:
    try:
        check_the_deployment(deployment, browser)
    except BaseException:
        print(deployment.compose.logs())
        raise


def check_the_deployment(deployment: Deployment, browser: Any) -> None:
    compose, cli_data = deployment.compose, deployment.folder / "reviewer" / "data"
    cli_data.mkdir(parents=True)

    # Given the deployment up (migrate ran and exited 0; every healthcheck passes),
    # When a read-only goal is submitted with `docker compose run --rm submit GOAL`,
    # Then it runs unattended (checked below: meanwhile, the reviews go on).
    assert compose.instances["migrate"][0].process.returncode == 0  # type: ignore[union-attr]
    reading = compose.run("submit", READ_ONLY_GOAL)

    # Given a goal whose plan writes, held by a rule that requires `finance`,
    # When bob (no role) opens it in the page, Then it offers him no form, saying why; and
    # when he posts an approval all the same (his own form token), he is refused (said on the
    # plan's page after a redirect, so that a reload sends nothing again) and nothing runs.
    first = deployment.held()
    bob = login(browser, deployment.url(1), deployment.bob)
    bob.goto(f"/reviews/{first['plan_id']}")
    assert "finance" in bob.inner_text("#no-role")
    assert bob.locator("#approve").count() == 0
    csrf = bob.get_attribute("form[action='/logout'] input[name=csrf]", "value")
    _, shown = call(f"{deployment.url(1)}/api/v1/reviews/{first['plan_id']}", token=deployment.bob)
    refused = bob.context.request.post(
        f"{deployment.url(1)}/reviews/{first['plan_id']}/approve",
        form={"csrf": str(csrf), "plan_hash": str(shown["plan_hash"])},
        max_redirects=0,
    )
    assert refused.status == 303
    assert "refused=" in refused.headers["location"]
    said = bob.context.request.get(f"{deployment.url(1)}{refused.headers['location']}")
    assert "finance" in said.text()
    bob.context.close()
    assert deployment.goal(first["goal_id"], {"held"})["steps"] == {}

    # When alice (finance) loads it on replica 1 and its form goes to replica 2 (as a load
    # balancer would send it; the page's own forms may post only to where it came from),
    # Then replica 2 accepts replica 1's form and the plan runs once.
    alice = login(browser, deployment.url(1), deployment.alice)
    alice.goto(f"/reviews/{first['plan_id']}")
    form = {
        name: alice.get_attribute(f"form[action$='/approve'] input[name={name}]", "value")
        for name in ("csrf", "plan_hash")
    }
    accepted = alice.context.request.post(  # the browser's cookies, sent to the other replica
        f"{deployment.url(2)}/reviews/{first['plan_id']}/approve", form=form, max_redirects=0
    )
    assert accepted.status == 303, accepted.text()
    assert "?done=approved&seal=" in accepted.headers["location"]
    alice.context.close()
    done = deployment.goal(first["goal_id"], {"completed", "failed"})
    assert done["status"] == "completed", done
    assert done["steps"]["notify"] == "succeeded", done
    assert deployment.notifications() == 1

    compose.wait_exit(reading, 60, expect=0)
    assert "completed" in compose.output(reading)

    # When another held plan is approved with the CLI and alice's token, Then it runs.
    second = deployment.held()
    approved = deployment.cli(
        "review", "approve", second["plan_id"], "--server", deployment.url(1),
        token=deployment.alice, data=cli_data,
    )  # fmt: skip
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert deployment.goal(second["goal_id"], {"completed", "failed"})["status"] == "completed"
    assert deployment.notifications() == 2

    # Given a third plan held by the role rule, and replica 3, which was handed a policy file
    # without that rule (serve is given none: what the hold recorded is what counts),
    # When bob approves it there with the CLI or the API, Then he is refused;
    # When alice then approves it, Then it runs: bob's attempts released nothing.
    third = deployment.held()
    refused_cli = deployment.cli(
        "review", "approve", third["plan_id"], "--server", deployment.url(3),
        token=deployment.bob, data=cli_data,
    )  # fmt: skip
    assert refused_cli.returncode != 0, refused_cli.stdout
    assert "finance" in refused_cli.stderr, refused_cli.stderr
    review = f"{deployment.url(3)}/api/v1/reviews/{third['plan_id']}"
    status, plan = call(review, token=deployment.bob)
    assert status == 200, plan
    status, answer = call(
        f"{review}/approve", "POST", {"plan_hash": plan["plan_hash"]}, deployment.bob
    )
    assert status == 403, answer
    assert deployment.goal(third["goal_id"], {"held"})["steps"] == {}
    status, answer = call(
        f"{review}/approve", "POST", {"plan_hash": plan["plan_hash"]}, deployment.alice
    )
    assert status in (200, 202), answer
    assert deployment.goal(third["goal_id"], {"completed", "failed"})["status"] == "completed"
    assert deployment.notifications() == 3

    # Given a fourth held plan, and someone with only the executor's settings (the database's
    # and the broker's URLs) and a reviewers file of their own naming an `alice` of finance,
    # When they approve it on the store with the CLI, Then it is recorded, but the gate (which
    # reads the deployment's reviewers file) signs nothing: the plan is held again, saying the
    # approval carries no proof of alice's token, and nothing is paged.
    fourth = deployment.held()
    attacker = deployment.folder / "attacker"
    (attacker / "data").mkdir(parents=True)
    mine = attacker / "reviewers.yaml"
    forged = add_reviewer(mine, attacker, "alice", "finance")
    executor = deployment.instance("executor").env
    shared = {name: executor[name] for name in ("PLANGATE_DATABASE_URL", "PLANGATE_BROKER_URL")}
    recorded = plangate(
        "review", "approve", fourth["plan_id"], HOME=str(attacker),
        PLANGATE_DATA_DIR=str(attacker / "data"), PLANGATE_REVIEWERS_FILE=str(mine),
        PLANGATE_REVIEWER_TOKEN=forged, **shared,
    )  # fmt: skip
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    eventually(
        lambda: "no proof of alice's token" in str(deployment.goal(fourth["goal_id"], {"held"})),
        timeout=45,
        what="the gate's refusal",
    )
    assert deployment.notifications() == 3

    # Then: the workers stop cleanly, no private key is in serve's or the CLI's data folder
    # (nor in the shared `keys` volume, which holds the gate's public key only), every `:ro`
    # bind was left alone, and the three workers sent their spans to "jaeger".
    codes = compose.down()
    assert all(codes[name] == 0 for name in WORKERS), codes
    assert compose.read_only_changes() == []
    for serve in compose.instances["serve"]:
        assert private_keys(serve.root) == [], serve.name
    assert private_keys(cli_data.parent) == []  # its data folder and its HOME
    keys = deployment.instance("executor").host_path("/keys")
    published = [p for p in keys.rglob("*") if p.is_file()]
    assert published, "the gate published no public key"
    assert all(p.suffix == ".pub" for p in published), published
    assert private_keys(keys) == []
    assert private_keys(deployment.instance("gate").host_path("/data")), "the gate made no key"
    spans = [json.loads(line) for line in deployment.spans.read_text().splitlines()]
    assert {f"plangate-{name}" for name in WORKERS} <= {span["service"] for span in spans}
