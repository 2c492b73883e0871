"""The goals pages in headless Chromium: find any goal, and see what its run found."""

from __future__ import annotations

from typing import Any

import pytest

from plangate.client import Client
from tests.conftest import SEED_GOAL
from tests.fleet import Fleet
from tests.test_review_api import call, held_goal, review, wait_for
from tests.test_review_page import (  # noqa: F401 - the module's fixtures
    HOSTILE_GOAL,
    base_url,
    browser,
    client,
    fleet,
    page,
)

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def goals(client: Client, base_url: str, fleet: Fleet) -> dict[str, str]:  # noqa: F811
    """A completed goal (approved by alice) whose text carries markup, a cancelled one and one
    that no playbook can plan."""
    done = client.submit(HOSTILE_GOAL).wait(timeout=30, until={"held"})
    _, plan = call(f"{base_url}/api/v1/reviews/{done.plan_id}")
    review(base_url, str(done.plan_id), "approve", {"plan_hash": plan["plan_hash"]})
    assert wait_for(client, done.goal_id, {"completed", "failed"}).status == "completed", (
        fleet.logs()
    )
    cancelled = held_goal(client).goal_id
    client.cancel(cancelled, "alice", "not today")
    unplanned = client.submit("paint the fence <i>blue</i>").wait(timeout=30).goal_id
    return {"completed": done.goal_id, "cancelled": cancelled, "plan_failed": unplanned}


def test_the_goals_page_lists_goals_of_every_state_and_its_filters_work(
    page: Any,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """Given a completed, a cancelled and an unplannable goal,
    When alice opens Goals from the header and filters by state, then by text,
    Then each goal is listed with its state, and each filter keeps exactly its goals.
    """
    page.click("#nav-goals")
    page.wait_for_url("**/goals")
    for state, goal_id in goals.items():
        row = page.locator(f"#goals tr[data-goal='{goal_id}']")
        assert row.get_attribute("data-state") == state

    page.select_option("select[name=state]", "cancelled")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**state=cancelled**")
    states = page.locator("#goals tbody tr").evaluate_all("rows => rows.map(r => r.dataset.state)")
    assert set(states) == {"cancelled"}
    assert page.locator(f"#goals tr[data-goal='{goals['cancelled']}']").count() == 1

    page.select_option("select[name=state]", "")
    page.fill("input[name=search]", "fence")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**search=fence**")
    listed = page.locator("#goals tbody tr").evaluate_all("rows => rows.map(r => r.dataset.goal)")
    assert listed == [goals["plan_failed"]]
    assert page.locator("#goals i").count() == 0  # the markup in its text is text

    page.fill("input[name=since]", "yesterday")
    page.click("#filters button[type=submit]")
    assert "neither an age" in page.inner_text("#outcome")


def test_a_goal_page_shows_what_each_step_found_its_audit_and_its_trace(
    page: Any,  # noqa: F811
    goals: dict[str, str],
) -> None:
    """Given the completed seed goal,
    When alice opens it from the goals page,
    Then each step shows its status, duration and output (128 tickets, an SLA of 100), the
    goal's text is escaped, its audit lists its moves with who made them, and the trace links
    to Jaeger.
    """
    page.goto("/goals?state=completed")
    page.click(f"#goals tr[data-goal='{goals['completed']}'] a")
    page.wait_for_url(f"**/goals/{goals['completed']}")
    assert page.inner_text("#state").startswith("completed")
    assert page.inner_text("#steps tr[data-step='count'] .output") == "128"
    assert page.inner_text("#steps tr[data-step='sla'] .output") == "100"
    assert "ms" in page.inner_text("#steps tr[data-step='count']")
    assert page.inner_text("#goal-text") == HOSTILE_GOAL
    assert page.locator("#goal-text b, #goal-text script").count() == 0
    assert page.evaluate("window.pwned") is None
    audit = page.inner_text("#audit")
    for kind in ("goal.submitted", "goal.held", "goal.approved", "goal.completed"):
        assert kind in audit, audit
    assert "alice" in audit
    assert "/trace/" in str(page.get_attribute("#trace", "href"))
    # Who made the plan that ran, and the rule that held it (the audit table alone said so).
    made_by = page.inner_text("#made-by")
    assert made_by.startswith("by playbook:"), made_by
    assert made_by.endswith("· held by rule hold-writes"), made_by


def test_held_plans_show_their_tools_writes_role_time_left_and_the_holds_record(
    page: Any,  # noqa: F811
    client: Client,  # noqa: F811
) -> None:
    """Given a held seed goal submitted by a service,
    When alice opens the held plans and then the plan,
    Then its row shows its tools, that it writes, the role it needs and the time left, and the
    plan page shows the hold's expiry, required role, policy version and submitter.
    """
    held = client.submit(SEED_GOAL, metadata={"submitter": "billing-service"}).wait(
        timeout=30, until={"held"}
    )
    page.goto("/reviews")
    row = page.locator("tr", has=page.locator(f"a[href='/reviews/{held.plan_id}']"))
    assert "notify_oncall" in row.locator(".tools").inner_text()
    assert row.locator(".badge.write").inner_text() == "writes"
    assert row.locator(".role").inner_text() == "any"
    assert row.locator(".time-left").inner_text().split("\n")[0].endswith("m")

    page.click(f"a[href='/reviews/{held.plan_id}']")
    assert page.inner_text("#hold-submitter").startswith("billing-service (as the submitter said")
    assert page.inner_text("#hold-role") == "any reviewer"
    assert page.inner_text("#hold-policy")
    assert "UTC" in page.inner_text("#hold-expires")


def test_text_that_reads_as_other_text_is_shown_with_its_escapes(
    page: Any,  # noqa: F811
    client: Client,  # noqa: F811
) -> None:
    """Given a held goal whose text holds a right-to-left override and a zero-width space
    (`EVIL\\u202eEMCA` reads as `EVILACME`),
    When alice opens it by its short id, as the docs say she may,
    Then the page shows both characters as their escapes, as `plangate status` does; the page
    showed them as they are, and the short id answered 500.
    """
    text = SEED_GOAL + " for vendor EVIL\u202eEMCA and ZW\u200bCORP"
    held = client.submit(text).wait(timeout=30, until={"held"})

    answer = page.goto(f"/goals/{held.goal_id[:8]}")

    assert answer.status == 200
    shown = page.inner_text("#goal-text")
    assert "EVIL\\u202eEMCA" in shown
    assert "ZW\\u200bCORP" in shown
    assert "\u202e" not in page.content()


def test_a_long_unbroken_value_leaves_the_short_columns_readable(
    page: Any,  # noqa: F811
    client: Client,  # noqa: F811
) -> None:
    """A goal or argument of 900 letters without a space squeezed the other columns to a
    letter a line ("fi/n/a/n/c/e", a step id broken into pairs)."""
    held = client.submit(SEED_GOAL + " " + "B" * 900).wait(timeout=30, until={"held"})
    page.set_viewport_size({"width": 1100, "height": 900})
    lines = LINES_OF_TEXT

    page.goto("/reviews")
    row = page.locator("tr", has=page.locator(f"a[href='/reviews/{held.plan_id}']"))
    role_lines = row.locator(".role").evaluate(lines)
    page.click(f"a[href='/reviews/{held.plan_id}']")
    first_step = page.locator("#steps tbody tr").first
    id_lines, tool_lines = (first_step.locator("td").nth(i).evaluate(lines) for i in (0, 1))

    assert (role_lines, id_lines, tool_lines) == (1, 1, 1)


# How many lines the text of an element takes as laid out: its text's line boxes.
LINES_OF_TEXT = """element => {
  const range = document.createRange();
  range.selectNodeContents(element);
  const tops = new Set([...range.getClientRects()].map(rect => Math.round(rect.top)));
  return tops.size;
}"""
