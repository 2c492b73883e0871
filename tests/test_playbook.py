"""The playbook file: mistakes are refused when it loads, naming the place and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from plangate.config import Settings
from plangate.errors import ConfigError, PlanningFailed
from planner_worker.playbook import PlaybookPlanner
from schemas import GoalSubmitted, ToolSpec
from tests.support import running_pipeline


def playbook_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "playbook.yaml"
    path.write_text(text)
    return path


def water_playbook(tmp_path: Path, message: str) -> Path:
    """A playbook whose pattern names one group, `plant`, and whose step sends `message`."""
    return playbook_file(
        tmp_path,
        "playbooks:\n"
        "  - name: water\n"
        '    pattern: "water (?P<plant>\\\\w+)"\n'
        '    summary: "water {{plant}}"\n'
        f'    steps: [{{id: ask, tool: notify_oncall, args: {{message: "{message}"}}}}]\n',
    )


def test_a_placeholder_no_group_of_the_pattern_fills_is_refused_when_the_file_loads(
    tmp_path: Path,
) -> None:
    """It became "" in every plan, without a word ("water plants " for "water {{plant}}s")."""
    path = water_playbook(tmp_path, "water {{ plants }} {{ why }}")

    with pytest.raises(ConfigError) as refused:
        PlaybookPlanner.load(path)

    said = str(refused.value)
    assert said.startswith(f"playbook file {path} is invalid: playbooks.0: ")
    fills = "no group of the pattern fills {{plants}}, {{why}} (its named groups: (?P<plant>...))"
    assert fills in said
    assert "Value error" not in said


def test_placeholders_of_named_groups_are_filled_from_the_goal(tmp_path: Path) -> None:
    path = water_playbook(tmp_path, "water {{ plant }}")

    draft = PlaybookPlanner.load(path).draft(
        GoalSubmitted(goal_id="g1", text="water roses"), catalog={}
    )

    assert draft.summary == "water roses"
    assert dict(draft.steps[0].args) == {"message": "water roses"}


def test_an_unknown_top_level_key_lists_the_top_level_keys(tmp_path: Path) -> None:
    path = playbook_file(tmp_path, "foo: 1\nplaybooks: []\n")

    with pytest.raises(ConfigError, match=r'unknown key "foo" \(known keys: playbooks\)'):
        PlaybookPlanner.load(path)


def test_an_unknown_key_of_an_entry_lists_an_entry_s_keys(tmp_path: Path) -> None:
    path = playbook_file(
        tmp_path,
        "playbooks:\n  - {name: a, pattern: x, colour: red, steps: [{id: a, tool: t}]}\n",
    )

    with pytest.raises(ConfigError) as refused:
        PlaybookPlanner.load(path)

    assert 'unknown key "playbooks.0.colour" (known keys: name, pattern, summary, steps)' in str(
        refused.value
    )


def test_the_packaged_playbook_loads() -> None:
    assert PlaybookPlanner.load().entries


def test_goal_words_joined_into_a_step_reference_are_refused(tmp_path: Path) -> None:
    """Given a step argument of two placeholders side by side (`{{cur}}{{order}}`),
    When the goal gives them `$` and `{note}`, which joined spell `${note}`,
    Then planning fails saying so; each value was defanged alone, and the refund was called
    with another step's output as its order id.
    """
    path = playbook_file(
        tmp_path,
        "playbooks:\n"
        "  - name: refund\n"
        '    pattern: "refund order (?P<cur>\\\\S)(?P<order>\\\\S+)"\n'
        "    steps: [{id: pay, tool: notify_oncall, args: {message: '{{cur}}{{order}}'}}]\n",
    )
    planner = PlaybookPlanner.load(path)
    goal = GoalSubmitted(goal_id="g" * 32, text="refund order ${note}")

    with pytest.raises(PlanningFailed, match="would make a step reference"):
        planner.draft(goal, {})
    fine = planner.draft(GoalSubmitted(goal_id="g" * 32, text="refund order #42"), {})
    assert fine.steps[0].args == {"message": "#42"}


def test_a_goal_whose_words_make_the_playbook_s_summary_too_long_fails_with_that_reason(
    settings: Settings, tmp_path: Path
) -> None:
    """A playbook fills its summary from the goal: 3,000 characters made a plan no stage
    accepts. The planner's handler raised, each resend of the goal became one more dead
    letter, and the goal stayed `submitted` for good."""
    playbook = playbook_file(
        tmp_path,
        "playbooks:\n"
        "  - name: tell\n"
        '    pattern: "tell (?P<words>.+)"\n'
        '    summary: "Tell {{words}}"\n'
        "    steps: [{id: ask, tool: notify_oncall, args: {message: hello}}]\n",
    )
    with running_pipeline(settings, playbook_file=playbook) as pipeline:
        goal_id = pipeline.submit("tell " + "A" * 3000).goal_id

        goal = pipeline.wait_for(goal_id)

        assert goal.status == "plan_failed"
        assert "summary: String should have at most 2000 characters" in (goal.status_reason or "")
        assert pipeline.bus.dead_letters() == []


def test_a_placeholder_alone_fills_a_number_where_the_tool_takes_one(tmp_path: Path) -> None:
    """`amount: "{{amt}}"` gave the text "50", refused as "not of type 'number'": a playbook
    could pass no number from the goal's words. Text arguments stay text ("1001"), and a
    capture that is no number stays text, for the plan's check to refuse."""
    path = playbook_file(
        tmp_path,
        "playbooks:\n"
        "  - name: refund\n"
        '    pattern: "refund (?P<order>\\\\S+) (?P<amt>\\\\S+)"\n'
        "    steps: [{id: pay, tool: refund, args: "
        '{order_id: "{{order}}", amount: "{{amt}}", note: "{{amt}} back"}}]\n',
    )
    schema = {
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": "number"},
            "note": {"type": "string"},
        },
    }
    catalog = {"refund": ToolSpec(name="refund", effect="write", args_schema=schema)}
    planner = PlaybookPlanner.load(path)

    def args_for(text: str) -> dict[str, object]:
        draft = planner.draft(GoalSubmitted(goal_id="g1", text=text), catalog=catalog)
        return dict(draft.steps[0].args)

    assert args_for("refund 1001 50") == {"order_id": "1001", "amount": 50, "note": "50 back"}
    assert args_for("refund 1001 12.5")["amount"] == 12.5
    assert args_for("refund 1001 fifty")["amount"] == "fifty"
