"""Where a write's data comes from, known from the plan before anything runs.

A ticket's text (an untrusted read) that reaches `notify_oncall`'s message holds the plan,
whatever a later rule would say, and the review names the flow; the same page built from a
trusted read is approved where the policy says so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from plangate.client import Client
from plangate.config import Settings
from plangate.demo.tools import read_notifications
from plangate.review_views import detail_of
from plangate.tools import load_tools
from schemas import Plan, Step, ToolSpec
from schemas.data_flow import data_flow, untrusted_reaches
from tests.browser import chromium
from tests.support import HELD, only_plan, running_pipeline, write_yaml
from tests.test_review import cli_env, reviewer_env
from tests.test_review_api import ALICE, serving

TOOLS = ["plangate.demo.tools", "tests.flow_tools"]
POLICY = {
    "rules": [
        {
            "name": "hold-untrusted-writes",
            "match": "plan.writes_from_untrusted",
            "action": "hold",
            "reason": "a write carries untrusted data",
        },
        {"name": "approve-the-rest", "match": "true", "action": "approve", "reason": "trusted"},
    ]
}
PLAYBOOK = {
    "playbooks": [
        {
            "name": "page-with-the-ticket-text",
            "pattern": "(?i)page with the text of ticket (?P<ticket>\\w+)",
            "steps": [
                {"id": "body", "tool": "ticket_body", "args": {"ticket": "{{ticket}}"}},
                {"id": "notify", "tool": "notify_oncall", "args": {"message": "Says: ${body}"}},
            ],
        },
        {
            "name": "page-with-the-priority",
            "pattern": "(?i)page with the priority of ticket (?P<ticket>\\w+)",
            "steps": [
                {"id": "prio", "tool": "ticket_priority", "args": {"ticket": "{{ticket}}"}},
                {"id": "notify", "tool": "notify_oncall", "args": {"message": "P${prio}"}},
            ],
        },
    ]
}


def spec(name: str, effect: str, trust: str) -> ToolSpec:
    return ToolSpec.model_validate({"name": name, "effect": effect, "output_trust": trust})


def test_untrusted_data_is_followed_through_every_step_it_passes() -> None:
    """Given an untrusted read, a trusted step that takes its output, and a write fed by both
    the trusted step's output (message) and a condition on the read,
    Then every input of the write names both steps as sources, and the read as untrusted.
    """
    catalog = {
        "read_mail": spec("read_mail", "read", "untrusted"),
        "summarise": spec("summarise", "read", "trusted"),
        "send": spec("send", "write", "trusted"),
    }
    plan = Plan(
        plan_id="p",
        goal_id="g",
        revision=1,
        steps=(
            Step(id="mail", tool="read_mail"),
            Step(id="gist", tool="summarise", args={"text": "${mail}"}),
            Step(
                id="send",
                tool="send",
                args={"to": "ops@example.com", "body": "${gist}"},
                when='steps.mail.output != ""',
            ),
        ),
    )

    flows = data_flow(plan, catalog)

    assert flows["send"].sources == {"body": ("gist", "mail"), "when": ("mail",)}
    assert flows["send"].untrusted == {"body": ("mail",), "when": ("mail",)}
    assert flows["send"].untrusted_inputs == ("mail",)
    assert flows["gist"].untrusted_inputs == ("mail",)
    assert flows["mail"].untrusted_inputs == ()


FLOW_CATALOG = {
    f"{effect}_{trust}": spec(f"{effect}_{trust}", effect, trust)
    for effect in ("read", "write")
    for trust in ("trusted", "untrusted")
}
IDS = ("a", "b", "c", "d", "e")
# Mostly trusted steps: untrusted data that reaches a write only through trusted steps between
# them is the case worth drawing often.
TOOL_DRAWS = [
    *["read_trusted", "write_trusted"] * 3,
    "read_untrusted",
    "write_untrusted",
    "unheard_of",
]


@st.composite
def flow_plans(draw: st.DrawFn) -> Plan:
    """Plans whose steps refer at random to steps before them (or to none: dangling), with
    unknown tools too. Acyclic, as every plan the gate decides is (a cycle is refused first)."""
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=5, unique=True))
    steps = []
    for at, step_id in enumerate(ids):
        earlier = st.sampled_from([*ids[:at], "gone"])
        references = st.lists(earlier.map(lambda source: f"${{{source}.out}}"), max_size=2)
        args = {name: " ".join(draw(references)) for name in draw(st.sets(st.sampled_from("xy")))}
        when = draw(st.none() | earlier.map(lambda source: f"steps.{source}.output > 1"))
        tool = draw(st.sampled_from(TOOL_DRAWS))
        steps.append(Step(id=step_id, tool=tool, args=args, when=when))
    return Plan(plan_id="p", goal_id="g", revision=1, steps=tuple(steps))


THROUGH_A_TRUSTED_STEP = Plan(
    plan_id="p",
    goal_id="g",
    revision=1,
    steps=(
        Step(id="a", tool="read_untrusted"),
        Step(id="b", tool="read_trusted", args={"x": "${a.out}"}),
        Step(id="c", tool="write_trusted", args={"x": "${b.out}"}),
    ),
)


@given(flow_plans(), st.sets(st.sampled_from(IDS)))
@example(THROUGH_A_TRUSTED_STEP, {"c"})
def test_whether_untrusted_data_reaches_some_steps_agrees_with_the_whole_flow(
    plan: Plan, asked: set[str]
) -> None:
    """The gate's quick question (does untrusted data reach any of these steps?) gets the
    answer the whole data flow gives, on any plan the gate decides: chains of steps, dangling
    references, conditions, unknown tools."""
    flows = data_flow(plan, FLOW_CATALOG)
    expected = any(flows[step_id].untrusted_inputs for step_id in asked if step_id in flows)
    assert untrusted_reaches(plan, FLOW_CATALOG, asked) == expected


def test_a_page_built_from_a_tickets_text_is_held_and_its_review_names_the_flow(
    settings: Settings, tmp_path: Path
) -> None:
    """Given a policy that holds writes carrying untrusted data and approves the rest,
    When one goal pages with a ticket's text and another with the ticket's priority,
    Then the first is held by hold-untrusted-writes, and `review show` and the API mark the
    message as carrying data from `body (ticket_body)`; the second is approved and pages.
    """
    policy = write_yaml(tmp_path / "policy.yaml", POLICY)
    playbook = write_yaml(tmp_path / "playbook.yaml", PLAYBOOK)
    registry = load_tools(TOOLS)
    with running_pipeline(
        settings, policy_file=policy, playbook_file=playbook, registry=registry
    ) as pipeline:
        text_goal = pipeline.submit("page with the text of ticket T1").goal_id
        priority_goal = pipeline.submit("page with the priority of ticket T1").goal_id
        pipeline.wait_for(text_goal, HELD, timeout=10)
        approved = pipeline.wait_for(priority_goal, timeout=10)
        plan = only_plan(pipeline.store, text_goal)
        detail = detail_of(pipeline.review.get(plan.plan_id), registry.catalog())
        marked = _marked_on_the_page(pipeline.settings, plan.plan_id)
        env = cli_env(pipeline, tmp_path, **reviewer_env(tmp_path, "alice"))
        shown = subprocess.run(
            [sys.executable, "-m", "plangate", "review", "show", plan.plan_id],
            capture_output=True,
            text=True,
            env=env | {"COLUMNS": "200"},
            timeout=60,
            check=False,
        )

    steps = {step.id: step for step in detail.steps}
    assert steps["notify"].untrusted_from == {"message": ["body (ticket_body)"]}
    assert steps["body"].untrusted_from == {}
    assert detail.policy is not None
    assert detail.policy.rule == "hold-untrusted-writes"
    assert shown.returncode == 0, shown.stderr
    assert "message carries untrusted data from body (ticket_body)" in shown.stdout
    assert marked == "⚠ message carries untrusted data from body (ticket_body)"
    assert approved.status == "completed", approved.status_reason
    assert [n["message"] for n in read_notifications()] == ["P1"]


def _marked_on_the_page(settings: Settings, plan_id: str) -> str:
    """Return what the plan's review page (headless Chromium) says of the untrusted input."""
    with Client(settings) as client, serving(client) as url, chromium() as browser:
        page = browser.new_page(base_url=url)
        page.goto("/reviews")
        page.fill("#token", ALICE)
        page.click("button[type=submit]")
        page.wait_for_url("**/reviews")
        page.goto(f"/reviews/{plan_id}")
        return str(page.inner_text("#steps .untrusted"))
