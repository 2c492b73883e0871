"""A settle names the call it settles: a repeated settle cannot settle a later call.

Settled "did not happen", a write is called again and may be cut off again. A settle that named
no call (an API body without `unknown_since`, `plangate review settle` without `--since`)
settled whichever call was unknown when it came: the same request or command, replayed after
the write had run again, ran it once more, though nobody had checked that call.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.unknown_calls import since_text
from tests.support import audit_entries, step_runs
from tests.test_review import cli_env, reviewer_env
from tests.test_review_api import call
from tests.test_settle import (
    APPROVE_ALL,
    CHARGES,
    TOKEN,
    api_beside,
    billing_under,
    cut_off_again,
    cut_off_mid_charge,
    run_cli,
    since_listed,
)


@pytest.fixture
def billing(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with billing_under(APPROVE_ALL, settings, tmp_path) as pipeline:
        yield pipeline


def test_the_api_refuses_a_settle_that_names_no_call(billing: Pipeline) -> None:
    """Given a run stopped on its unknown charge,
    When a reviewer posts `{"happened": false}` with no `unknown_since`,
    Then the answer is 422 saying to send the `since` of the call checked, as the unsettled
    list gives it (and that a CLI without `--since` is an older release's, to upgrade), and
    the charge is still unknown: nothing runs it again.
    """
    plan, _ = cut_off_mid_charge(billing)
    with api_beside(billing) as url:
        settle_url = f"{url}/api/v1/reviews/{plan.plan_id}/steps/charge/settle"
        status, refused = call(settle_url, "POST", {"happened": False}, token=TOKEN)

    assert status == 422, refused
    said = json.dumps(refused)
    assert "unknown_since is missing" in said
    assert "send the `since` of the unknown call you checked" in said
    assert "GET /api/v1/reviews/unsettled" in said
    assert "without `--since` is of a release before this one: upgrade it" in said
    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}
    assert billing.wait_for(plan.goal_id, {"needs_attention"}, timeout=1).status == (
        "needs_attention"
    )
    assert CHARGES == []


def test_the_cli_off_a_terminal_refuses_a_settle_without_since_giving_the_one_to_check(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a run stopped on its unknown charge,
    When `plangate review settle PLAN charge --not-happened` runs with no terminal to ask at
    (a script, a replayed command) and no `--since`,
    Then it exits 2 with one line that says to add `--since` with the since of the call
    unknown now, and the charge is still unknown; `--help` names the option.
    """
    plan, _ = cut_off_mid_charge(billing)

    refused = run_cli(
        billing, tmp_path, "review", "settle", plan.plan_id, "charge", "--not-happened"
    )
    helped = run_cli(billing, tmp_path, "review", "settle", "--help")

    assert refused.returncode == 2, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    now = since_text(since_listed(billing, plan))
    assert line.startswith(f"error: name the call you checked: add --since {now} ")
    assert '"amount": 5' in line  # what it was called with, to check it by
    assert step_runs(billing.store, plan.plan_id) == {"charge": "unknown"}
    assert "--since" in helped.stdout


def test_the_cli_refuses_a_settle_naming_a_call_before_the_one_unknown_now(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a charge settled "did not happen", called again and cut off again,
    When `review settle --since` names the first call (the command run again from history),
    Then it exits 2 saying the step was settled and called again since, and naming the call
    unknown now; the second call stays unknown, and `--since` of that one settles it, the
    `step.settled` entry recording which call it settled.
    """
    plan, _ = cut_off_mid_charge(billing)
    first, second = cut_off_again(billing, plan)
    settle = ("review", "settle", plan.plan_id, "charge")

    stale = run_cli(billing, tmp_path, *settle, "--since", since_text(first), "--not-happened")

    assert stale.returncode == 2, stale.stderr
    [line] = stale.stderr.strip().splitlines()
    assert "was settled and called again since you looked" in line
    assert f"is unknown since {since_text(second)}, not since {since_text(first)}" in line
    assert step_runs(billing.store, plan.plan_id)["charge"] == "unknown"
    assert since_listed(billing, plan) == second

    settled = run_cli(billing, tmp_path, *settle, "--since", since_text(second), "--happened")

    assert settled.returncode == 0, settled.stderr
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"
    entries = audit_entries(billing.store, plan.goal_id)
    calls = [e.data["unknown_since"] for e in entries if e.kind == "step.settled"]
    assert calls == [since_text(first), since_text(second)]


def test_the_cli_at_a_terminal_shows_the_call_unknown_now_and_settles_it_once_confirmed(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a run stopped on its unknown charge,
    When `review settle PLAN charge --happened` runs at a terminal without `--since`, and
    the person answers yes,
    Then it showed the call (its since, its arguments and key) and settled that call.
    """
    plan, _ = cut_off_mid_charge(billing)
    now = since_text(since_listed(billing, plan))
    env = cli_env(billing, tmp_path, **reviewer_env(tmp_path, "carol"))
    terminal, its_end = pty.openpty()
    try:
        settling = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plangate",
                *("review", "settle", plan.plan_id, "charge"),
                "--happened",
            ],
            stdin=its_end,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        os.write(terminal, b"y\n")  # the terminal keeps it until the question reads it
        stdout, stderr = settling.communicate(timeout=60)
    finally:
        os.close(its_end)
        os.close(terminal)

    assert settling.returncode == 0, stderr
    assert f"the call unknown now is since {now}, key " in stderr
    assert 'args {"amount": 5}' in stderr
    assert "Is it the call you checked?" in stderr
    assert "step charge settled" in stdout
    [entry] = [e for e in audit_entries(billing.store, plan.goal_id) if e.kind == "step.settled"]
    assert entry.data["unknown_since"] == now


def test_the_cli_through_serve_names_the_call_too(billing: Pipeline, tmp_path: Path) -> None:
    """Given a run stopped on its unknown charge and `plangate serve` beside it,
    When `review settle --server URL` runs off a terminal without `--since`, then with the
    since it gave,
    Then the first is refused (exit 2, naming the --since to add) and the second settles
    that call, as on the store.
    """
    plan, _ = cut_off_mid_charge(billing)
    now = since_text(since_listed(billing, plan))
    env = cli_env(billing, tmp_path, PLANGATE_REVIEWER_TOKEN=TOKEN)
    settle = [sys.executable, "-m", "plangate", "review", "settle", plan.plan_id, "charge"]
    with api_beside(billing) as url:
        there = [*settle, "--server", url, "--happened"]
        refused = subprocess.run(there, capture_output=True, text=True, env=env, check=False)
        settled = subprocess.run(
            [*there, "--since", now], capture_output=True, text=True, env=env, check=False
        )

    assert refused.returncode == 2, refused.stderr
    assert f"add --since {now} " in refused.stderr
    assert settled.returncode == 0, settled.stderr
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"


def printed_settle(output: str) -> list[str]:
    """The settle command in `output`, as argv for this interpreter's plangate."""
    import re
    import shlex

    [command] = re.findall(r"`(plangate review settle [^`]+)`", output) or re.findall(
        r"settle: (plangate review settle .+?) --happened \|", output
    )
    return [sys.executable, "-m", *shlex.split(command)]


def test_the_settle_command_status_prints_settles_the_step_as_printed(
    billing: Pipeline, tmp_path: Path
) -> None:
    """`plangate status` printed `plangate review settle PLAN STEP --since ... --happened`,
    which an on-call with no reviewers file ran and got "without --server, a reviewer token
    is checked against the reviewers file".

    Given a run stopped on its unknown charge and `plangate serve` beside it, and a CLI with
    PLANGATE_SERVER_URL and a reviewer token but no reviewers file,
    When `plangate status GOAL` runs, and the settle command it prints is run in a shell
    with the token alone,
    Then the command names the server and settles the charge; with no server URL known, it
    says where the URL goes.
    """
    plan, _ = cut_off_mid_charge(billing)
    env = cli_env(billing, tmp_path, PLANGATE_REVIEWER_TOKEN=TOKEN)
    status = [sys.executable, "-m", "plangate", "status", plan.goal_id]
    with api_beside(billing) as url:
        told = subprocess.run(
            status, capture_output=True, text=True, env={**env, "PLANGATE_SERVER_URL": url}
        )
        unknown_url = subprocess.run(status, capture_output=True, text=True, env=env)
        settled = subprocess.run(
            printed_settle(told.stdout), capture_output=True, text=True, env=env, check=False
        )

    assert f"`plangate review settle --server {url} {plan.plan_id} charge --since" in told.stdout
    assert "`plangate review settle --server SERVE_URL " in unknown_url.stdout
    assert settled.returncode == 0, settled.stderr
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"


def test_the_settle_command_the_unsettled_list_prints_goes_through_its_server(
    billing: Pipeline, tmp_path: Path
) -> None:
    """Given a run stopped on its unknown charge and `plangate serve` beside it,
    When `plangate review unsettled --server URL` lists it, and its settle command is run as
    printed (with --happened),
    Then the command names that server, and settles the charge.
    """
    plan, _ = cut_off_mid_charge(billing)
    env = cli_env(billing, tmp_path, PLANGATE_REVIEWER_TOKEN=TOKEN)
    unsettled = [sys.executable, "-m", "plangate", "review", "unsettled"]
    with api_beside(billing) as url:
        listed = subprocess.run(
            [*unsettled, "--server", url], capture_output=True, text=True, env=env
        )
        settled = subprocess.run(
            [*printed_settle(listed.stdout), "--happened"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    assert f"settle: plangate review settle --server {url} " in listed.stdout
    assert settled.returncode == 0, settled.stderr
    assert step_runs(billing.store, plan.plan_id)["charge"] == "succeeded"
