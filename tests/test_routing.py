"""The routing table: every message type routed once, and the topology built from it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args
from uuid import uuid4

import pytest
from kombu import Queue

from plangate.bus import Bus, Envelope
from plangate.bus.topology import STAGE_BINDINGS, Topology
from schemas import (
    MESSAGE_MODELS,
    ROUTES,
    GoalSubmitted,
    Message,
    PlangateError,
    Route,
    RoutesIncomplete,
)
from schemas.asyncapi import asyncapi_document
from schemas.export import export_json_schemas
from schemas.routing import (
    DEAD_LETTER_BINDING,
    STAGES,
    TERMINAL_TYPES,
    check_routes,
    stage_bindings,
)


class PlanPondered(Message):
    """A message someone added to the models and forgot to route."""

    type: Literal["plan.pondered"] = "plan.pondered"


@pytest.fixture
def unrouted_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan.pondered` registered as a message model, with no route in the table."""
    monkeypatch.setitem(MESSAGE_MODELS, "plan.pondered", PlanPondered)


def bound_keys(queue: object) -> set[str]:
    return {b.routing_key for b in getattr(queue, "bindings")}  # noqa: B009 - kombu is untyped


def test_every_message_model_has_a_route_and_every_route_a_model() -> None:
    assert set(MESSAGE_MODELS) == set(ROUTES)
    check_routes(MESSAGE_MODELS)


@pytest.mark.usefixtures("unrouted_model")
def test_a_model_without_a_route_is_refused_saying_where_to_add_it() -> None:
    """Given a message model registered without a route,
    When the routes are checked,
    Then the check names the type and says to add a Route in schemas/routing.py.
    """
    with pytest.raises(RoutesIncomplete) as refused:
        check_routes(MESSAGE_MODELS)

    assert refused.value.unrouted == {"plan.pondered"}
    assert "plan.pondered have a model but no route" in str(refused.value)
    assert "add a Route to schemas/routing.py" in str(refused.value)


@pytest.mark.usefixtures("unrouted_model")
def test_nothing_is_derived_from_a_table_that_misses_a_model(tmp_path: Path) -> None:
    with pytest.raises(RoutesIncomplete, match=r"plan\.pondered"):
        asyncapi_document()
    with pytest.raises(RoutesIncomplete, match=r"plan\.pondered"):
        export_json_schemas(tmp_path)


def test_a_route_without_a_model_is_refused() -> None:
    routes = {**ROUTES, "plan.pondered": Route("plan.pondered", ("planner",))}

    with pytest.raises(RoutesIncomplete, match=r"route\(s\) plan\.pondered have no model"):
        check_routes(MESSAGE_MODELS, routes)


@pytest.mark.parametrize("key", ["retry.planner", "dead.plangate.gate", "plan.#", "plan.*"])
def test_a_routing_key_taken_by_retries_dead_letters_or_patterns_is_refused(key: str) -> None:
    with pytest.raises(PlangateError, match="reserved or a pattern"):
        check_routes([key], {key: Route(key, ("planner",))})


@pytest.mark.parametrize("message_type", sorted(ROUTES))
def test_each_route_is_keyed_by_a_type_its_model_declares(message_type: str) -> None:
    route = ROUTES[message_type]
    model = MESSAGE_MODELS[message_type]

    assert route.type == route.routing_key == message_type
    assert message_type in get_args(model.model_fields["type"].annotation)


def test_each_stage_queue_is_bound_to_what_the_table_says_it_consumes_and_its_retry_key() -> None:
    """The bindings as they were written by hand before the table, and as the table derives them.

    The planner is bound to execution.failed always: re-planning on failure is a setting, and a
    durable queue keeps its bindings across restarts.
    """
    topology = Topology("t")

    assert stage_bindings() == STAGE_BINDINGS
    assert STAGE_BINDINGS == {
        "planner": ("goal.submitted", "plan.rejected", "execution.failed"),
        "gate": ("plan.proposed", "review.decided"),
        "executor": ("plan.approved", "plan.preview_requested"),
    }
    for stage in STAGES:
        bound = bound_keys(topology.stage_queue(stage))
        assert bound == {*STAGE_BINDINGS[stage], f"retry.{stage}"}


def test_dead_letters_of_every_queue_go_to_the_dead_letter_queue() -> None:
    topology = Topology("t")

    queue = topology.dead_letter_queue()

    assert (
        (queue.name, queue.routing_key) == ("t.dead", DEAD_LETTER_BINDING) == ("t.dead", "dead.#")
    )
    assert topology.dead_key(topology.queue_name("gate")) == "dead.t.gate"


def test_an_observer_queue_is_bound_to_every_message_type_and_nothing_else() -> None:
    queue = Topology("t").observer_queue("x")

    assert bound_keys(queue) == set(ROUTES)
    assert (queue.durable, queue.auto_delete) == (False, True)


def test_the_goal_ends_with_a_final_outcome_or_a_refusal() -> None:
    assert {
        "plan.failed",
        "plan.denied",
        "plan.rejected",
        "plan.expired",
        "execution.completed",
        "execution.failed",
        "execution.cancelled",
    } == TERMINAL_TYPES


def test_an_observer_sees_stage_messages_but_not_retry_copies_or_dead_letters(bus: Bus) -> None:
    """Given an observer,
    When a retry copy, a dead letter and then a goal are published,
    Then the observer's first (and only) message is the goal.
    """
    goal = GoalSubmitted(goal_id=uuid4().hex, text="count open tickets")
    copy = Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="a retry copy"))
    with bus.observe() as observer:
        bus.publish(
            [
                Envelope(bus.topology.retry_key("planner"), copy.body, copy.headers),
                Envelope(bus.topology.dead_key("t.planner"), copy.body, copy.headers),
                Envelope.of(goal),
            ]
        )

        assert observer.next(timeout=5.0) == goal
        assert observer.next(timeout=0.2) is None


def test_an_observer_that_left_keeps_no_queue_that_messages_would_pile_up_in(bus: Bus) -> None:
    """Given an observer that has closed,
    When a goal is published after it left,
    Then nothing was kept for it (Redis and memory keep auto-delete queues and
    their bindings unless they are deleted: every later message would be copied there forever).
    """
    with bus.observe() as observer:
        left_behind = observer.queue_name
    bus.publish([Envelope.of(GoalSubmitted(goal_id=uuid4().hex, text="after it left"))])

    # Declared again (as nothing), it holds no copy of what was published after it left.
    with bus.connection() as connection:
        queue = Queue(left_behind, exchange=bus.topology.exchange, auto_delete=True)
        declared = queue.bind(connection.channel())
        _, waiting, _ = declared.queue_declare()
        declared.delete()
    assert waiting == 0
