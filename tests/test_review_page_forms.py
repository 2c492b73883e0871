"""The review page's forms in headless Chromium: what they hold, what they send back, what a
refusal keeps, and what a reload sends again.

One embedded pipeline per test (SQLite, the in-process memory broker, which the served app
publishes to too); its policy holds pages for two approvals from finance.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.reviewers import add_reviewer
from plangate.server import create_app
from plangate.store import audit
from tests.browser import chromium
from tests.conftest import SEED_GOAL
from tests.fleet import serving_app
from tests.support import HELD, audit_entries, only_plan, plans_of, running_pipeline
from tests.test_held_view import FINANCE, TWO_FROM_FINANCE

# As a planner copied them from a goal: a right-to-left override, a zero-width space, a BOM.
HIDDEN_SUMMARY = "Pay acme 1500.00:\n\u202eevil\u202c \u200bnote\ufeff"
# A soft hyphen and a C1 control too, which `printable` writes as `\xad`, no JSON escape; and
# six characters a person typed, `\u202e`, which must stay six characters.
HIDDEN_MESSAGE = "over SLA \u202eevil\u202c\u00ad\u0085 typed: \\u202e"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    team = tmp_path / "reviewers.yaml"
    return {name: add_reviewer(team, name, sorted(FINANCE)) for name in ("alice", "frank")}


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(TWO_FROM_FINANCE)
    with running_pipeline(settings, policy_file=policy) as running:
        yield running


@pytest.fixture
def site(pipeline: Pipeline, tmp_path: Path, tokens: dict[str, str]) -> Iterator[str]:
    """`plangate serve` on the pipeline's store and broker; yield its base URL."""
    update = {"reviewers_file": tmp_path / "reviewers.yaml", "broker_url": "memory://"}
    with serving_app(create_app(pipeline.settings.model_copy(update=update))) as url:
        yield url


def logged_in(browser: Any, site: str, token: str) -> Any:
    """Return a page of a fresh browser context, logged in with `token`."""
    page = browser.new_context(base_url=site).new_page()
    page.set_default_timeout(15_000)
    page.goto("/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/reviews")
    return page


def held_goal(pipeline: Pipeline) -> tuple[str, str]:
    """Submit the seed goal; return its id and its held plan's."""
    goal_id = pipeline.submit(SEED_GOAL).goal_id
    pipeline.wait_for(goal_id, HELD, timeout=10)
    return goal_id, only_plan(pipeline.store, goal_id).plan_id


def edited_by_frank(pipeline: Pipeline, goal_id: str, **changes: str) -> str:
    """Have frank edit the goal's plan (its message, its summary); return revision 2, held."""
    first = only_plan(pipeline.store, goal_id)
    steps = [step.model_dump(mode="json", exclude_defaults=True) for step in first.steps]
    steps[2]["args"] = {"message": changes.get("message", "frank: tickets over SLA")}
    summary = changes.get("summary")
    pipeline.edit(first.plan_id, "frank", steps, summary=summary, roles=FINANCE, comment="typo")
    pipeline.wait_for(goal_id, HELD, timeout=10)
    return plans_of(pipeline.store, goal_id)[-1].plan_id


def test_saving_an_edit_keeps_hidden_characters_of_the_summary_and_steps_as_they_were(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given revision 2 of a plan, its summary and a step's message holding bidi and invisible
    characters (and a line break, which a text field cannot hold),
    When alice opens it, changes one word of the steps JSON, and saves, leaving the summary,
    Then revision 3 holds the summary exactly as it was, said to be revision 2's words, and
    the message as it was but for her word: the page had put each such character in the
    form as six typed characters (`\\u202e`), which the save then stored; the steps JSON
    shows them as JSON's escapes, and the page says the summary holds some.
    """
    goal_id, _ = held_goal(pipeline)
    second = edited_by_frank(pipeline, goal_id, summary=HIDDEN_SUMMARY, message=HIDDEN_MESSAGE)
    page = logged_in(browser, site, tokens["alice"])
    page.goto(f"/reviews/{second}")
    typed = page.input_value("#steps-json")
    hides = page.locator("#summary-hides").count()

    page.fill("#steps-json", typed.replace("over SLA", "over the SLA"))
    page.click("#edit")
    page.wait_for_url("**done=edited&seal=*")

    third = plans_of(pipeline.store, goal_id)[-1]
    assert third.revision == 3
    assert third.body["summary"] == HIDDEN_SUMMARY
    message = third.body["steps"][2]["args"]["message"]
    assert message == HIDDEN_MESSAGE.replace("over SLA", "over the SLA")
    assert "\\u202eevil\\u202c\\u00ad\\u0085 typed: \\\\u202e" in typed  # seen, and JSON
    assert "\u202e" not in typed
    assert hides == 1
    assert page.inner_text("#summary-from").startswith(
        "Summary from revision 2, not changed by the edit"
    )
    assert '"summary"' not in page.inner_text(".diff")


def test_a_refused_edit_shows_back_invisible_characters_as_typed(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given alice's edit form, a zero-width space typed into its summary and its reason,
    When she saves steps that are not JSON,
    Then the refusal shows her summary and reason as she typed them, to be saved once the
    steps are fixed: they came back with `\\u200b`, six characters, in place of the space.
    """
    _, plan_id = held_goal(pipeline)
    page = logged_in(browser, site, tokens["alice"])
    page.goto(f"/reviews/{plan_id}")

    page.fill("#summary", "Page on\u200bcall")
    page.fill("#edit-comment", "why\u200bnot")
    page.fill("#steps-json", "[not json")
    page.click("#edit")

    assert "not JSON" in page.inner_text("#outcome")
    assert page.input_value("#summary") == "Page on\u200bcall"
    assert page.input_value("#edit-comment") == "why\u200bnot"
    assert page.input_value("#steps-json") == "[not json"


def test_the_goals_filter_shows_the_text_searched_for_as_typed(
    browser: Any, site: str, tokens: dict[str, str]
) -> None:
    """Given alice's search of the goals for a name holding a zero-width space,
    When the goals page answers,
    Then its search field holds the text as she typed it, to search again: it held `\\u200b`,
    six characters, which a second search looked for.
    """
    page = logged_in(browser, site, tokens["alice"])

    page.goto("/goals?" + urlencode({"search": "vendor\u200b6"}))

    assert page.input_value("input[name=search]") == "vendor\u200b6"


def test_approving_again_is_refused_after_a_redirect_saying_how_far_the_approval_is(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given a plan needing two approvals, open in two of alice's tabs,
    When she approves in one, then in the other,
    Then the second is refused on the plan's page after a redirect, saying she approved it
    already, 1 of 2 approvals, and reloading it sends nothing: it was the POST's own 422
    answer, which a reload sent again.
    """
    _, plan_id = held_goal(pipeline)
    first = logged_in(browser, site, tokens["alice"])
    first.goto(f"/reviews/{plan_id}")
    second = first.context.new_page()
    second.goto(f"/reviews/{plan_id}")
    first.click("#approve")
    first.wait_for_url("**done=approved&seal=*")

    second.click("#approve")
    second.wait_for_url("**refused=*", timeout=5_000)
    said = second.inner_text("#outcome")
    sent: list[str] = []
    second.on("request", lambda request: sent.append(request.method))
    second.reload()

    assert f"alice has approved plan {plan_id} already: 1 of 2 approvals (alice)" in said
    assert sent == ["GET"]
    assert second.inner_text("#outcome") == said


def test_an_edit_refused_as_replaced_meanwhile_keeps_what_the_reviewer_typed(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given alice's edit of revision 1, a 10,000-character message, a summary and a reason,
    typed while frank's edit replaced revision 1 by revision 2,
    When she saves it,
    Then it is refused, and the page shows what she typed, read-only, to carry over to
    revision 2, which it links to; nothing of it is applied to revision 2. The replaced
    revision's page has no edit form: it all was lost.
    """
    goal_id, plan_id = held_goal(pipeline)
    page = logged_in(browser, site, tokens["alice"])
    page.goto(f"/reviews/{plan_id}")
    steps = json.loads(page.input_value("#steps-json"))
    steps[2]["args"]["message"] = "X" * 10_000
    typed = json.dumps(steps, indent=2)
    page.fill("#steps-json", typed)
    page.fill("#summary", "alice's summary")
    page.fill("#edit-comment", "alice's reason")
    newest = edited_by_frank(pipeline, goal_id)

    page.click("#edit")

    assert "revision 2 replaced it" in page.inner_text("#outcome")
    assert page.input_value("#draft-steps") == typed
    assert page.input_value("#draft-summary") == "alice's summary"
    assert page.input_value("#draft-comment") == "alice's reason"
    assert page.locator("#draft textarea:not([readonly])").count() == 0
    assert page.get_attribute("#draft-newest", "href") == f"/reviews/{newest}"
    revisions = plans_of(pipeline.store, goal_id)
    assert [plan.plan_id for plan in revisions] == [plan_id, newest]
    assert "X" * 100 not in json.dumps(revisions[-1].body)


def test_every_field_of_an_edited_revisions_page_is_named_by_its_label(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given revision 2, frank's edit, which says "Edited by frank" above its steps,
    When alice opens it,
    Then no two elements share an id, and "Why edit it?" names the reason's field: the
    "Edited by" paragraph had the field's id, so the label named nothing.
    """
    goal_id, _ = held_goal(pipeline)
    second = edited_by_frank(pipeline, goal_id)
    page = logged_in(browser, site, tokens["alice"])

    page.goto(f"/reviews/{second}")

    repeated = page.evaluate(
        "[...document.querySelectorAll('[id]')].map(e => e.id)"
        ".filter((id, i, ids) => ids.indexOf(id) !== i)"
    )
    assert repeated == []
    assert page.get_by_label("Why edit it?").get_attribute("name") == "comment"
    assert page.inner_text("#edited-by") == "Edited by frank from revision 1: typo"


def test_the_pages_ask_for_no_favicon(browser: Any, site: str) -> None:
    """Given a browser that has not visited plangate,
    When it opens the login page,
    Then it asks for no /favicon.ico, and logs no error: each first visit logged its 404.
    """
    page = browser.new_context(base_url=site).new_page()
    asked: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )

    page.goto("/login")
    page.wait_for_load_state("networkidle")

    assert [url for url in asked if "favicon" in url] == []
    assert errors == []


def test_on_a_phone_the_pages_do_not_run_off_screen_and_the_decision_is_a_tap_away(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given a held plan, and alice on a phone (400 px wide),
    When she opens the list and the plan,
    Then neither page scrolls sideways (the list ran to 742 px, its approvals off screen), and
    the plan's "Skip to the decision" brings Approve into view (on a 25-step plan it sat
    22,800 px down).
    """
    _, plan_id = held_goal(pipeline)
    page = logged_in(browser, site, tokens["alice"])
    page.set_viewport_size({"width": 400, "height": 800})
    wide = "document.documentElement.scrollWidth"

    page.goto("/reviews")
    list_width = page.evaluate(wide)
    page.goto(f"/reviews/{plan_id}")
    plan_width = page.evaluate(wide)
    page.click("#skip-to-decide")
    approve = page.locator("#approve").bounding_box()

    assert (list_width, plan_width) == (400, 400)
    assert approve is not None
    assert 0 <= approve["y"] < 800


def test_a_goal_page_whose_audit_was_flooded_still_shows_its_newest_entries(
    browser: Any, site: str, pipeline: Pipeline, tokens: dict[str, str]
) -> None:
    """Given a held goal whose chain someone filled with 600 refused decisions, then approved
    by alice and frank and completed,
    When alice opens the goal's page,
    Then its audit shows the first entries and the newest (the approval, the completion), and
    says how many are left out between and which command writes them all: it showed the
    oldest 500 alone, so what happened after the flood could not be seen.
    """
    goal_id, plan_id = held_goal(pipeline)
    with pipeline.store.session() as session:
        for n in range(600):
            data = {"plan_id": plan_id, "action": "cancel", "reason": "no role"}
            audit.append(session, "review.refused", actor=f"mallory{n}", goal_id=goal_id, data=data)
    for who in ("alice", "frank"):
        pipeline.approve(plan_id, who, roles=FINANCE)
    assert pipeline.wait_for(goal_id, timeout=10).status == "completed"
    page = logged_in(browser, site, tokens["alice"])

    page.goto(f"/goals/{goal_id}")
    shown = page.inner_text("#audit")
    left_out = page.inner_text("#audit-left-out")

    assert "goal.submitted" in shown
    assert "goal.completed" in shown
    assert "approval.signed" in shown
    total = len(audit_entries(pipeline.store, goal_id))
    assert left_out.startswith(f"{total - 500} entries are not shown here")
    assert f"plangate audit export --goal {goal_id}" in left_out
