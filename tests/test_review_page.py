"""The review page in headless Chromium (Playwright): approve, reject and edit by clicking.

Debian's `chromium` is driven directly (never `playwright install`). Without it the tests skip
locally and fail in CI. Screenshots of the list and the plan view go to the system temp folder.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plangate.client import Client
from plangate.store import GoalRow, StepRunRow, open_store
from schemas import utcnow
from tests.browser import chromium
from tests.conftest import SEED_GOAL
from tests.fleet import Fleet
from tests.support import audit_entries, eventually
from tests.test_review_api import ALICE, BOB, call, fleet_settings, held_goal, serving, start_fleet

pytestmark = pytest.mark.redis

# The playbook still matches; the markup must show as text, never run or render.
HOSTILE_GOAL = SEED_GOAL + " <b>now</b><script>window.pwned = 1</script>"
SCREENSHOTS = Path(tempfile.gettempdir())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    running = start_fleet(tmp_path_factory.mktemp("review-page"), redis_url)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture(scope="module")
def client(fleet: Fleet) -> Iterator[Client]:
    with Client(fleet_settings(fleet)) as shared:
        yield shared


@pytest.fixture(scope="module")
def base_url(client: Client) -> Iterator[str]:
    with serving(client) as url:
        yield url


@pytest.fixture
def page(browser: Any, base_url: str) -> Iterator[Any]:
    """A fresh browser session, logged in as alice."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto("/reviews")
    assert page.url.endswith("/login")
    page.fill("#token", ALICE)
    page.click("button[type=submit]")
    page.wait_for_url("**/reviews")
    try:
        yield page
    finally:
        context.close()


def api_status(base_url: str, goal_id: str, until: set[str], timeout: float = 30) -> dict[str, Any]:
    """Poll GET /api/v1/goals/{id} until the goal reaches one of `until`."""
    deadline = time.monotonic() + timeout
    while True:
        status, state = call(f"{base_url}/api/v1/goals/{goal_id}")
        assert status == 200, state
        if state["status"] in until or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def notifications(fleet: Fleet) -> int:
    path = fleet.folder / "notifications.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_approving_in_the_page_runs_the_plan(
    page: Any, base_url: str, client: Client, fleet: Fleet
) -> None:
    """Given a held seed goal whose text carries markup,
    When alice opens it from the list and clicks Approve,
    Then the table shows 3 steps (notify_oncall marked write), the goal text shows as
    escaped text in the untrusted box, and the goal completes.
    """
    goal = client.submit(HOSTILE_GOAL).wait(timeout=30, until={"held", "completed", "failed"})
    assert goal.status == "held", goal

    page.reload()
    page.screenshot(path=str(SCREENSHOTS / "plangate-review-list.png"), full_page=True)
    page.click(f"a[href='/reviews/{goal.plan_id}']")
    rows = page.locator("#steps tbody tr")
    assert rows.count() == 3
    notify = rows.filter(has_text="notify_oncall")
    assert notify.locator(".badge.write").inner_text() == "write"
    assert rows.filter(has_text="ticket_count").locator(".badge.read").count() == 1
    assert page.inner_text("#goal-text") == HOSTILE_GOAL
    assert page.locator("#goal-text b, #goal-text script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert "hold-writes" in page.content()
    page.screenshot(path=str(SCREENSHOTS / "plangate-review-plan.png"), full_page=True)

    page.click("#approve")

    page.wait_for_url("**done=approved&seal=*")
    assert page.inner_text("#outcome") == "Your approval is recorded."
    assert page.inner_text("#goal-status") in {"approved", "running", "completed"}
    assert "approved by alice" in page.inner_text("#headline").lower()
    assert page.locator("#approve").count() == 0
    state = api_status(base_url, goal.goal_id, {"completed", "failed"})
    assert state["status"] == "completed", fleet.logs()
    assert state["decision"]["decided_by"] == "alice"

    page.reload()
    assert page.inner_text("#headline") == "Completed, approved by alice."
    results = page.locator("#results tbody tr")
    assert [results.nth(i).locator(".badge").inner_text() for i in range(3)] == [
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    assert page.inner_text("#results tr[data-step='count'] .output") == "128"
    page.screenshot(path=str(SCREENSHOTS / "plangate-review-completed.png"), full_page=True)


def test_rejecting_with_a_comment_in_the_page_runs_nothing(
    page: Any, base_url: str, client: Client, fleet: Fleet
) -> None:
    goal = held_goal(client)
    before = notifications(fleet)
    page.goto(f"/reviews/{goal.plan_id}")

    page.fill("#comment", "not during the change freeze")
    page.click("#reject")

    page.wait_for_url("**done=rejected&seal=*")
    assert page.inner_text("#outcome") == "Your rejection is recorded."
    assert page.inner_text("#headline") == "Rejected by alice: it will not run."
    assert page.inner_text("#reason") == "not during the change freeze"
    assert page.inner_text("#goal-status") == "rejected"
    state = api_status(base_url, goal.goal_id, {"rejected"})
    assert state["status"] == "rejected"
    assert state["decision"]["reason"] == "not during the change freeze"
    assert state["steps"] == {"count": "skipped", "sla": "skipped", "notify": "skipped"}
    assert notifications(fleet) == before


def test_editing_an_argument_in_the_page_makes_a_new_revision(
    page: Any, base_url: str, client: Client
) -> None:
    goal = held_goal(client)
    page.goto(f"/reviews/{goal.plan_id}")
    steps = json.loads(page.input_value("#steps-json"))
    steps[2]["args"]["message"] = "Edited in the page: ${count} > ${sla}"

    page.fill("#steps-json", json.dumps(steps, indent=2))
    page.click("#edit")

    page.wait_for_url("**done=edited&seal=*")
    assert goal.plan_id not in page.url
    state = api_status(base_url, goal.goal_id, {"held"})
    assert state["status"] == "held"
    assert state["revision"] == 2
    page.goto(f"/reviews/{state['plan_id']}")
    assert "revision 2" in page.inner_text("main")
    assert "Edited in the page" in page.inner_text(".diff")
    assert "Edited in the page: ${count} > ${sla}" in page.inner_text("#steps")
    page.screenshot(path=str(SCREENSHOTS / "plangate-review-revision.png"), full_page=True)
    # Its author is not offered Approve (the gate refuses an editor's approval of the edit).
    assert page.locator("#approve").count() == 0
    assert "You edited this revision" in page.inner_text("#authored")


def test_a_stale_form_shows_the_409_message(page: Any, client: Client) -> None:
    """Given a plan page open in two tabs, approving in one makes the other's click a 409."""
    goal = held_goal(client)
    page.goto(f"/reviews/{goal.plan_id}")
    other = page.context.new_page()
    other.goto(f"/reviews/{goal.plan_id}")

    other.click("#approve")
    other.wait_for_url("**done=approved&seal=*")
    page.click("#approve")

    assert "not waiting for review" in page.inner_text("#outcome")


def test_the_plan_page_shows_the_dry_run_beside_the_steps(
    page: Any, client: Client, fleet: Fleet
) -> None:
    """Given a held seed goal (the default policy previews what it holds),
    When alice opens its page once the executor has made the dry run,
    Then the preview table shows the reads' real outputs and the page notify would send,
    and nothing was paged.
    """
    goal = client.submit(SEED_GOAL).wait(timeout=30, until={"held", "completed", "failed"})
    assert goal.status == "held", goal
    before = notifications(fleet)

    def shown() -> bool:
        page.goto(f"/reviews/{goal.plan_id}")
        return page.locator("#preview").count() == 1

    eventually(shown, timeout=30, what="the dry run on the page")
    rows = page.locator("#preview tbody tr")
    assert rows.count() == 3
    assert "128" in rows.filter(has_text="ticket_count").inner_text()
    assert "100" in rows.filter(has_text="sla_threshold").inner_text()
    notify = rows.filter(has_text="notify_oncall")
    assert "previewed" in notify.inner_text()
    assert "page the on-call engineer: 'Ticket count 128 exceeded SLA 100'" in notify.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "plangate-review-preview.png"), full_page=True)
    assert notifications(fleet) == before


def notify_left_unknown(base_url: str, client: Client, fleet: Fleet) -> Any:
    """Run the seed goal to completion, then leave its notify step as an executor killed
    mid-call leaves a non-idempotent write (`unknown`, the goal needing attention)."""
    goal = held_goal(client)
    _, plan = call(f"{base_url}/api/v1/reviews/{goal.plan_id}")
    call(
        f"{base_url}/api/v1/reviews/{goal.plan_id}/approve",
        "POST",
        {"plan_hash": plan["plan_hash"]},
    )
    assert api_status(base_url, goal.goal_id, {"completed", "failed"})["status"] == "completed"
    store = open_store(fleet_settings(fleet).resolved_database_url(), upgrade=False)
    try:
        with store.session() as session:
            session.get_one(GoalRow, goal.goal_id).status = "needs_attention"
            step = session.get_one(StepRunRow, (goal.plan_id, "notify"))
            step.status, step.error = "unknown", "an executor died during this call"
            step.finished_at = utcnow()
    finally:
        store.close()
    return goal


def test_a_step_that_may_have_happened_is_settled_from_the_list_page(
    page: Any, base_url: str, client: Client, fleet: Fleet
) -> None:
    """Given the seed goal run to completion, then its notify step left as an executor killed
    mid-call leaves a non-idempotent write (`unknown`, the goal needing attention),
    When alice opens the list page and says it happened,
    Then the page lists the step with its plan, the run resumes and completes, and nothing is
    paged again.
    """
    goal = notify_left_unknown(base_url, client, fleet)
    pages_sent = notifications(fleet)

    page.goto("/reviews")
    row = page.locator(f"#unsettled tr[data-step='{goal.plan_id}/notify']")
    assert "notify_oncall" in row.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "plangate-review-unsettled.png"), full_page=True)
    row.locator("input[name=comment]").fill("PagerDuty shows the incident")
    row.locator("button[value=yes]").click()

    page.wait_for_url(f"**/reviews/{goal.plan_id}?done=settled&seal=*")
    assert page.inner_text("#outcome") == "What you found is recorded."
    assert page.inner_text("#goal-status") != "needs_attention"
    state = api_status(base_url, goal.goal_id, {"completed", "failed"})
    assert state["status"] == "completed", fleet.logs()
    assert notifications(fleet) == pages_sent
    page.reload()
    assert page.inner_text("#headline") == "Completed, approved by alice."


def test_a_settle_from_a_page_left_open_is_refused_after_a_redirect(
    page: Any, base_url: str, client: Client, fleet: Fleet
) -> None:
    """Given the notify step unknown, and alice's list page open on it (saying since when),
    When she settles it through the API meanwhile (another tab, a script), then clicks "It
    happened" on the page,
    Then her settle is refused on the plan's page after a redirect, saying it is settled
    already, so that a reload sends nothing again: it was answered at the POST's URL, and a
    reload offered to send the stale settle again.
    """
    goal = notify_left_unknown(base_url, client, fleet)
    page.goto("/reviews")
    row = page.locator(f"#unsettled tr[data-step='{goal.plan_id}/notify']")
    assert "unknown since 20" in row.inner_text()
    status, [listed] = call(f"{base_url}/api/v1/reviews/unsettled")
    assert status == 200, listed
    settle = f"{base_url}/api/v1/reviews/{goal.plan_id}/steps/notify/settle"
    found = {"happened": True, "unknown_since": listed["since"]}
    assert call(settle, "POST", found)[0] == 200

    row.locator("button[value=yes]").click()

    page.wait_for_url(f"**/reviews/{goal.plan_id}?refused=*")
    assert "not unknown: nothing to settle" in page.inner_text("#outcome")


def test_the_api_explorer_works_without_internet(browser: Any, base_url: str) -> None:
    """Given a browser that may reach nothing but plangate (every other host is refused),
    When /docs opens,
    Then Swagger UI shows the API's operations, its assets served by plangate itself.
    """
    context = browser.new_context(base_url=base_url)
    refused: list[str] = []

    def only_plangate(route: Any) -> None:
        if route.request.url.startswith(base_url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_plangate)
    page = context.new_page()
    try:
        page.goto("/docs")
        page.wait_for_selector(".opblock", timeout=15_000)
        operations = page.locator(".opblock-summary-path").all_inner_texts()
    finally:
        context.close()

    assert any("/api/v1/goals" in path for path in operations), operations
    assert refused == []


def test_back_after_logging_out_shows_no_page_of_the_session(
    page: Any, client: Client, base_url: str
) -> None:
    """Given alice on a held goal's plan page in Chromium,
    When she logs out and presses Back,
    Then the browser shows the login page again, not the plan from its cache.
    """
    goal = held_goal(client)
    page.goto(f"/reviews/{goal.plan_id}")
    page.wait_for_selector("#goal-status")

    page.click("form[action='/logout'] button")
    page.wait_for_url("**/login?out=1")
    page.go_back()
    page.wait_for_load_state()

    assert page.url.endswith(f"/login?next=%2Freviews%2F{goal.plan_id}")
    assert page.locator("#goal-status").count() == 0


def test_a_login_forged_by_another_site_leaves_the_browser_as_its_reviewer(
    page: Any, base_url: str
) -> None:
    """Given alice logged in, and a page on another site that posts bob's token to /login
    as soon as it opens,
    When alice's browser opens that page,
    Then plangate refuses the login, and the list page still says alice is signed in: her
    next decision cannot go down as bob's.
    """
    forged = (
        f'<form id="f" method="post" action="{base_url}/login">'
        f'<input name="token" value="{BOB}"></form><script>f.submit()</script>'
    )
    page.context.route(
        "http://elsewhere.test/**",
        lambda route: route.fulfill(status=200, content_type="text/html", body=forged),
    )

    page.goto("http://elsewhere.test/win-a-prize")
    page.wait_for_url(f"{base_url}/login")
    refused = page.inner_text("body")
    page.goto("/reviews")

    assert "A login sent from another site is refused" in refused
    assert "signed in as alice" in " ".join(page.inner_text("body").split())


def test_a_refused_edit_keeps_what_the_reviewer_typed_and_long_words_wrap(
    page: Any, base_url: str, client: Client
) -> None:
    """Given a held plan edited to a summary of 1,500 characters without a space,
    Then its page is no wider than the window (it was 26,000 px wide);
    When the reviewer then types another summary and steps that are not JSON, and saves,
    Then the page refuses the edit and shows both fields as typed (the summary was put back
    as it was, losing what was typed).
    """
    goal = held_goal(client)
    page.goto(f"/reviews/{goal.plan_id}")
    page.fill("#summary", "x" * 1500)
    page.click("#edit")
    page.wait_for_url("**done=edited&seal=*")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"]
    # The edit is a revision the gate decides again: its form shows once it is held (on a
    # busy machine, after the page came back).
    eventually(
        lambda: (
            client.status(goal.goal_id).status == "held"
            and client.status(goal.goal_id).plan_id != goal.plan_id
        ),
        timeout=30,
        what="the edited revision held again",
    )
    page.reload()

    page.fill("#summary", "typed, then refused")
    page.fill("#steps-json", "[not json")
    page.click("#edit")

    assert page.input_value("#summary") == "typed, then refused"
    assert page.input_value("#steps-json") == "[not json"


def test_a_link_saying_a_decision_was_recorded_shows_nothing_unless_this_session_made_it(
    page: Any, client: Client
) -> None:
    """`/reviews/ID?done=approved` showed "Your approval is recorded." to anyone who opened
    it: a link someone sends could tell a reviewer they had decided, so that they did not.
    The notice is sealed to the session that decided; another's seal shows nothing either."""
    goal = client.submit(SEED_GOAL).wait(timeout=30, until={"held", "completed", "failed"})
    assert goal.status == "held", goal

    for crafted in (
        "?done=approved",
        "?done=approved&seal=" + "0" * 32,
        "?done=approved&seal=%C3%A9",
    ):
        page.goto(f"/reviews/{goal.plan_id}{crafted}")
        assert page.locator("#outcome").count() == 0, crafted
        assert page.locator("#approve").count() == 1


def test_a_plan_link_followed_logged_out_comes_back_to_the_plan_after_login(
    browser: Any, base_url: str, client: Client
) -> None:
    """A review link (a notice's `review_url`) opened without a session led to the login,
    then to the list, not to the plan; a logout said nothing. A `next` that is not a plan's
    page of this server is not followed."""
    goal = client.submit(SEED_GOAL).wait(timeout=30, until={"held", "completed", "failed"})
    assert goal.status == "held", goal
    context = browser.new_context(base_url=base_url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(f"/reviews/{goal.plan_id}")
        page.wait_for_url("**/login?next=*")
        page.fill("#token", ALICE)
        page.click("button[type=submit]")
        page.wait_for_url(f"**/reviews/{goal.plan_id}")
        back_on_the_plan = page.locator("#approve").count()
        page.click("form[action='/logout'] button")
        page.wait_for_url("**/login?out=1")
        logged_out = page.inner_text("#outcome")
        page.goto("/login?next=//evil.example/reviews/abc")
        page.fill("#token", ALICE)
        page.click("button[type=submit]")
        page.wait_for_url("**/reviews")
        after_foreign_next = page.url
    finally:
        context.close()

    assert back_on_the_plan == 1
    assert logged_out == "You are logged out."
    assert after_foreign_next == f"{base_url}/reviews"


def test_a_plan_that_is_not_there_is_said_in_the_pages_words(page: Any) -> None:
    """It told a person in a browser to run `plangate review list`."""
    page.goto("/reviews/0123456789abcdef0123456789abcdef")

    said = page.inner_text("#outcome")
    assert said == (
        "There is no plan '0123456789abcdef0123456789abcdef': the list below shows the plans "
        "held now."
    )
    assert "plangate" not in said


def test_an_edit_made_in_the_page_keeps_why_in_the_audit_log(
    page: Any, fleet: Fleet, client: Client
) -> None:
    """The page's edit form had no place to say why: an auditor read two hashes."""
    goal = held_goal(client)
    page.goto(f"/reviews/{goal.plan_id}")
    steps = json.loads(page.input_value("#steps-json"))
    steps[2]["args"]["message"] = "Edited with a reason: ${count} > ${sla}"

    page.fill("#steps-json", json.dumps(steps, indent=2))
    page.fill("#edit-comment", "the on-call rota changed")
    page.click("#edit")

    page.wait_for_url("**done=edited&seal=*")
    [data] = audited(fleet, goal.goal_id, "plan.edited")
    assert data["comment"] == "the on-call rota changed"


def audited(fleet: Fleet, goal_id: str, kind: str) -> list[dict[str, Any]]:
    """Return the data of the goal's audit entries of `kind`, in the order written."""
    store = open_store(fleet.database_url)
    try:
        return [entry.data for entry in audit_entries(store, goal_id) if entry.kind == kind]
    finally:
        store.close()


def test_an_approval_made_in_the_page_keeps_the_reviewers_note_in_the_audit_log(
    page: Any, fleet: Fleet, client: Client
) -> None:
    """The page's approve form had no place for a note: a `comment` posted to it was dropped,
    though the API and the CLI record one (an auditor read `"comment": ""`)."""
    goal = held_goal(client)
    page.goto(f"/reviews/{goal.plan_id}")

    page.fill("#approve-comment", "SOW-22 signed")
    page.click("#approve")

    page.wait_for_url("**done=approved&seal=*")
    approvals = audited(fleet, goal.goal_id, "goal.approved")
    assert [data.get("comment") for data in approvals] == ["SOW-22 signed"]
