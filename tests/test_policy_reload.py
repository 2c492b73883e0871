"""An operator's change to the policy file takes effect without a restart, and a bad one never.

An emergency deny rule used to wait for the gate's restart, and nothing said so.
"""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from approval_gate import policy_reload
from approval_gate.approvers import ProvenApprovers
from approval_gate.policy import Policy
from approval_gate.policy_lint import PolicyWarnings
from approval_gate.policy_reload import ReloadingPolicy
from plangate.config import Settings
from plangate.reviewers import Reviewers, add_reviewer
from plangate.store import open_store
from plangate.worker import Worker
from tests.servers import free_port
from tests.support import eventually, running_pipeline

APPROVE_READS = """
rules:
  - name: approve-reads
    match: plan.steps.all(s, s.effect == "read")
    action: approve
    reason: reads only
"""
DENY_EVERYTHING = """
rules:
  - name: emergency-stop
    match: "true"
    action: deny
    reason: stopped by the on-call engineer
"""
BROKEN = """
rules:
  - name: half-typed
    match: plan.steps.all(s,
    action: deny
"""
CEL_TYPO = """
rules:
  - name: emergency-stop
    match: plan.steps.exists(s, s.tool == "notify_oncall"
    action: deny
    reason: stopped by the on-call engineer
"""


@pytest.fixture(autouse=True)
def look_at_every_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look at the file at every decision, not at most once a second: no test waits."""
    monkeypatch.setattr(policy_reload, "LOOK_EVERY_SECONDS", 0.0)


def test_a_running_gate_decides_with_the_policy_file_as_it_reads_now(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a pipeline whose policy approves read-only plans,
    When the operator replaces the file with a rule that denies everything,
    Then the next read-only goal is denied by that rule, without a restart, and the gate's
    log says which version it now decides with.
    """
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    with running_pipeline(settings, policy_file=path) as pipeline:
        before = pipeline.wait_for(pipeline.submit("how many tickets are open").goal_id)
        path.write_text(DENY_EVERYTHING)
        with caplog.at_level("INFO", logger="approval_gate.policy_reload"):
            after = pipeline.wait_for(pipeline.submit("how many tickets are open").goal_id)

    assert before.status == "completed"
    assert after.status == "denied"
    assert "stopped by the on-call engineer" in (after.status_reason or "")
    new_version = Policy.load(path).version
    assert f"policy reloaded from {path}: version {new_version}, 1 rules" in caplog.text


def test_a_policy_file_changed_into_one_that_does_not_load_keeps_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a gate's policy, and its file then saved half-typed (a rule that does not compile),
    Then the gate goes on deciding with the version it had, and logs an error that says so;
    once the file is fixed, the fixed version is used.
    """
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    first = Policy.load(path)
    policies = ReloadingPolicy(first, path)

    path.write_text(BROKEN)
    with caplog.at_level("ERROR", logger="approval_gate.policy_reload"):
        kept = policies.current()
    path.write_text(DENY_EVERYTHING)
    fixed = policies.current()

    assert kept is first
    assert f"the policy file {path} changed but cannot be used" in caplog.text
    assert f"still deciding with version {first.version}: fix the file" in caplog.text
    assert fixed.version == Policy.load(path).version != first.version


def test_a_policy_file_removed_for_a_moment_keeps_the_policy(tmp_path: Path) -> None:
    """An editor's save may remove the file before it writes the new one: nothing changes."""
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    first = Policy.load(path)
    policies = ReloadingPolicy(first, path)

    path.unlink()

    assert policies.current() is first


def test_a_policy_given_without_a_file_is_never_reread() -> None:
    policy = Policy.from_bytes(APPROVE_READS.encode())

    assert ReloadingPolicy(policy).current() is policy


MISSPELT_DENY = """
rules:
  - name: deny-pages
    match: plan.steps.exists(s, s.tool == "notify_oncal")
    action: deny
    reason: pages are never automated
  - name: approve-the-rest
    match: "true"
    action: approve
    reason: everything else
"""


def test_a_gate_warns_once_of_a_rule_naming_a_tool_the_catalog_lacks(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a running gate whose deny rule names `notify_oncal` (a typo of `notify_oncall`),
    When it decides two goals,
    Then its log warns once, at the first decision, naming the rule, the tool, the policy
    version and the likely spelling (the rule never matches: the next rule released pages).
    """
    path = tmp_path / "policy.yaml"
    path.write_text(MISSPELT_DENY)
    with (
        caplog.at_level("WARNING", logger="approval_gate.policy_lint"),
        running_pipeline(settings, policy_file=path) as pipeline,
    ):
        for _ in range(2):
            pipeline.wait_for(pipeline.submit("how many tickets are open").goal_id)

    said = [r.getMessage() for r in caplog.records if r.name == "approval_gate.policy_lint"]
    assert len(said) == 1, said
    assert Policy.load(path).version in said[0]
    assert "rule 'deny-pages' (line 3) names the tool 'notify_oncal'" in said[0]
    assert "did you mean 'notify_oncall'?" in said[0]


def test_a_gate_with_a_reviewers_file_warns_once_of_a_hold_no_reviewer_can_release(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a gate whose reviewers file lists alice (finance) alone, and a rule holding for
    the role `auditor`, When it decides, Then its log says nobody can approve what the rule
    holds (only `policy check` said so)."""
    team = tmp_path / "reviewers.yaml"
    add_reviewer(team, "alice", ["finance"])
    rule = "{name: audit, match: 'true', action: hold, reason: r, requires_role: auditor}"
    policy = Policy.from_text(f"rules:\n  - {rule}\n")
    known = ProvenApprovers(Reviewers.from_file(team)).known()
    warnings = PolicyWarnings()

    with caplog.at_level("WARNING", logger="approval_gate.policy_lint"):
        for _ in range(2):  # two decisions
            warnings.check(policy, {}, lambda: known)

    said = [r.getMessage() for r in caplog.records if r.name == "approval_gate.policy_lint"]
    assert len(said) == 1, said
    assert "asks the role 'auditor', which no reviewer has" in said[0]


def test_a_running_gate_refuses_a_policy_file_grown_past_its_bounds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a gate's policy, When its file is replaced by one of 1,001 rules,
    Then the gate goes on deciding with the version it had, and its error names the bound
    (20,000 rules were compiled inside a decision, which waited 20 s).
    """
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    first = Policy.load(path)
    policies = ReloadingPolicy(first, path)
    rule = "  - {{name: r{0}, match: 'true', action: deny, reason: r}}\n"
    path.write_text("rules:\n" + "".join(rule.format(i) for i in range(1001)))

    with caplog.at_level("ERROR", logger="approval_gate.policy_reload"):
        kept = policies.current()

    assert kept is first
    assert "has 1001 rules; a policy may have at most 1000" in caplog.text


def unusable() -> float | None:
    return REGISTRY.get_sample_value("plangate_policy_file_unusable")


def test_a_policy_file_that_stays_unusable_is_said_again_every_few_minutes_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given a gate's policy whose file is saved with a deny rule that does not compile,
    When it decides three plans within a few minutes, Then its log says so once, and
    `plangate_policy_file_unusable` is 1 (one line at the next decision was all there was:
    an emergency deny rule that did not compile left the older policy deciding unnoticed);
    When minutes pass with the file still broken, Then the next decision says it again;
    When the file is fixed, Then the gauge is 0 again.
    """
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    first = Policy.load(path)
    policies = ReloadingPolicy(first, path)
    said_before = unusable()

    path.write_text(CEL_TYPO)
    with caplog.at_level("ERROR", logger="approval_gate.policy_reload"):
        for _ in range(3):
            policies.current()
        said_at_once = caplog.text.count(f"the policy file {path}")
        flagged = unusable()
        monkeypatch.setattr(policy_reload, "SAY_AGAIN_EVERY_SECONDS", 0.0)  # minutes later
        policies.current()
    path.write_text(DENY_EVERYTHING)
    policies.current()

    assert said_before == 0
    assert said_at_once == 1
    assert flagged == 1
    assert f"the policy file {path} still cannot be used" in caplog.text
    assert f"still deciding with version {first.version}: fix the file" in caplog.text
    assert unusable() == 0


def test_a_policy_file_deleted_under_a_gate_is_counted_unusable_until_it_is_back(
    tmp_path: Path,
) -> None:
    """Given a gate's policy, When its file is deleted, Then the gauge is 1 (the gate decides
    with the version it had); When it is written back as it was, Then it is 0 again."""
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    policies = ReloadingPolicy(Policy.load(path), path)

    path.unlink()
    policies.current()
    gone = unusable()
    path.write_text(APPROVE_READS)
    policies.current()

    assert gone == 1
    assert unusable() == 0


def scraped(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("memory://", id="idle"),
        # The look came after the sweep's broker reads: through an outage the alert
        # PlangatePolicyFileUnusable went on firing over a file the operator had fixed.
        pytest.param(f"redis://127.0.0.1:{free_port()}/0", id="its-broker-not-answering"),
    ],
)
def test_an_idle_gate_worker_shows_on_metrics_that_its_policy_file_cannot_be_used(
    tmp_path: Path, broker: str
) -> None:
    """Given a gate worker deciding no plan, with its metrics port (its broker answering, or
    not: nothing listens on its port),
    When its policy file is saved with a rule that does not compile,
    Then within a sweep its /metrics says `plangate_policy_file_unusable 1` and still the
    version it decides with; When the file is fixed, Then 0, and only the new version is
    labelled (it was seen, and said, only at the next plan).
    """
    path = tmp_path / "policy.yaml"
    path.write_text(APPROVE_READS)
    port = free_port()
    settings = Settings(
        data_dir=tmp_path / "data",
        broker_url=broker,
        namespace="policy-metrics",
        health_port=port,
        policy_file=path,
        sweep_interval_seconds=0.1,
    )
    open_store(settings.resolved_database_url()).close()
    worker = Worker("gate", settings, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/metrics"
    old, new = Policy.load(path).version, Policy.from_text(DENY_EVERYTHING).version
    try:
        eventually(lambda: worker_says(url, old, 0), timeout=20, what="the version at start")
        path.write_text(CEL_TYPO)
        eventually(lambda: worker_says(url, old, 1), timeout=20, what="the file unusable")
        path.write_text(DENY_EVERYTHING)
        eventually(lambda: worker_says(url, new, 0), timeout=20, what="the fixed version")
        versions = [
            labels for name, labels in scraped(url) if name == "plangate_policy_version_info"
        ]
    finally:
        worker.stop.set()
        thread.join(timeout=20)

    assert versions == [(("version", new),)]


def worker_says(url: str, version: str, file_unusable: int) -> bool:
    """Whether the scrape at `url` shows `version` in force and the file (un)usable."""
    try:
        samples = scraped(url)
    except OSError:  # not listening yet
        return False
    return (
        samples.get(("plangate_policy_version_info", (("version", version),))) == 1
        and samples.get(("plangate_policy_file_unusable", ())) == file_unusable
    )
