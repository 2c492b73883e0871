"""The tool catalog in the store: what executors publish is what planners and gates read."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from plangate import catalog as catalog_module
from plangate.bus import Delivery
from plangate.catalog import keep_offering, load_catalog, publish_catalog, read_catalog
from plangate.embedded import Pipeline
from plangate.errors import NotReady, Reject, Retry
from plangate.signing_keys import load_or_create_signer
from plangate.stages import build_handler
from plangate.store import Store, ToolCatalogRow, open_store
from schemas import Plan, PlanApproved, Step, ToolSpec, utcnow
from tests.support import eventually, sign_approval

READ = ToolSpec(
    name="ticket_count",
    effect="read",
    description="Open tickets in a queue",
    args_schema={"type": "object", "properties": {"queue": {"type": "string"}}},
)
WRITE = ToolSpec(
    name="notify_oncall",
    effect="write",
    args_schema={
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
    },
)


def test_a_published_catalog_reads_back_spec_for_spec(store: Store) -> None:
    publish_catalog(store, [READ, WRITE])

    assert load_catalog(store) == {"ticket_count": READ, "notify_oncall": WRITE}


def test_a_republished_spec_replaces_the_one_read_before(store: Store) -> None:
    publish_catalog(store, [READ])
    assert load_catalog(store)["ticket_count"].description == "Open tickets in a queue"

    changed = READ.model_copy(update={"description": "Open tickets, any queue"})
    publish_catalog(store, [changed])

    assert load_catalog(store) == {"ticket_count": changed}


def test_the_catalog_is_read_in_the_callers_transaction(store: Store) -> None:
    with store.session() as session:
        session.add(ToolCatalogRow(name=WRITE.name, spec=WRITE.model_dump(mode="json")))
        # Not committed yet: a handler reading in its own transaction sees its own writes.
        assert read_catalog(session) == {"notify_oncall": WRITE}


def test_an_invalid_spec_is_left_out_with_a_warning_and_the_rest_is_read(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    publish_catalog(store, [READ, WRITE])
    with store.session() as session:  # as an older version might have written it
        session.execute(
            update(ToolCatalogRow)
            .where(ToolCatalogRow.name == "notify_oncall")
            .values(spec={"name": "notify_oncall", "effect": "delete everything"})
        )

    with caplog.at_level(logging.WARNING, logger="plangate.catalog"):
        catalog = load_catalog(store)

    assert catalog == {"ticket_count": READ}
    assert "tool notify_oncall in the catalog is invalid and left out" in caplog.text


def test_an_executor_offering_a_tool_otherwise_says_so_naming_what_differs(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the catalog published by one executor, When another publishes `ticket_count` with
    other arguments (another version of its MCP server, other modules), Then the catalog takes
    its spec and the log says which tool differs and in what (nothing was said: every goal then
    failed `bad_args` for the executor still running the old one); the same spec again says
    nothing."""
    publish_catalog(store, [READ, WRITE])
    changed = READ.model_copy(
        update={"args_schema": {"type": "object", "properties": {"count": {"type": "integer"}}}}
    )

    with caplog.at_level(logging.WARNING, logger="plangate.catalog"):
        publish_catalog(store, [changed, WRITE])
        publish_catalog(store, [changed, WRITE])

    assert load_catalog(store)["ticket_count"] == changed
    said = [r.getMessage() for r in caplog.records if r.name == "plangate.catalog"]
    assert len(said) == 1, said
    assert said[0].startswith("tool ticket_count differs from the catalog's (args_schema)")


def test_the_embedded_mode_takes_its_changed_tools_without_a_warning_about_other_executors(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Given the catalog of an earlier `plangate run`, When the next run's tool has another
    description (its docstring edited), Then the catalog takes it and no warning speaks of
    other executors and a rollout: one process has no others (it puzzled a newcomer)."""
    publish_catalog(store, [READ, WRITE], shared=False)
    edited = READ.model_copy(update={"description": "Count the open tickets, now in Jira."})

    with caplog.at_level(logging.WARNING, logger="plangate.catalog"):
        publish_catalog(store, [edited, WRITE], shared=False)

    assert load_catalog(store)["ticket_count"] == edited
    assert [r for r in caplog.records if r.name == "plangate.catalog"] == []


def test_an_executor_lacking_a_tool_others_offer_hands_the_plan_back_then_says_why_it_fails(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a catalog where another executor offered `stock_level`, and this one started
    without it (other PLANGATE_TOOLS),
    When a plan calling it, approved, reaches this executor,
    Then it hands the plan back twice (another executor may have the tool), saying which tools
    it lacks and what to fix: it failed the goal at once, "the plan is invalid". The third
    time, the plan is refused saying the executors that took it lack the tools (handed back
    for ever, it went round the dead-letter queue while no running executor had them).
    """
    stock = ToolSpec(name="stock_level", effect="read", idempotent=True)
    publish_catalog(pipeline.store, [stock])  # as the other executor did at its start
    with pipeline.store.session() as session:  # which has not said it offers it since
        session.execute(
            update(ToolCatalogRow)
            .where(ToolCatalogRow.name == "stock_level")
            .values(updated_at=utcnow() - timedelta(hours=1))
        )
    plan = Plan(
        plan_id="p-stock", goal_id="g-stock", revision=1, steps=[Step(id="s", tool="stock_level")]
    )
    approved = sign_approval(load_or_create_signer(pipeline.settings), plan)
    executor = build_handler("executor", pipeline.settings, pipeline.store, pipeline.bus)

    def delivered(attempt: int) -> Delivery:
        return Delivery("plangate.executor", "plan.approved", {}, attempt, redelivered=False)

    with caplog.at_level(logging.ERROR, logger="executor_worker.lacking_tools"):
        for attempt in (1, 2):
            with pytest.raises(Retry):
                executor(approved, delivered(attempt))
    with pytest.raises(Reject) as refused:  # no goal row here: refused, naming why
        executor(approved, delivered(3))

    said = [r.getMessage() for r in caplog.records if "lacks the tools" in r.getMessage()]
    assert len(said) == 2
    assert "this executor lacks the tools stock_level, which the catalog has" in said[0]
    assert "PLANGATE_TOOLS" in said[0]
    assert "the executors that took it lack the tools stock_level" in str(refused.value)


def test_a_plan_whose_tools_an_executor_offered_lately_is_handed_on_without_end(
    pipeline: Pipeline,
) -> None:
    """Given `stock_level` offered lately by another executor (its catalog row fresh), When a
    plan calling it reaches an executor lacking it, even past its tries, Then it is handed on
    without using an attempt (NotReady)."""
    stock = ToolSpec(name="stock_level", effect="read", idempotent=True)
    publish_catalog(pipeline.store, [stock])
    plan = Plan(
        plan_id="p-stock", goal_id="g-stock", revision=1, steps=[Step(id="s", tool="stock_level")]
    )
    approved = sign_approval(load_or_create_signer(pipeline.settings), plan)
    executor = build_handler("executor", pipeline.settings, pipeline.store, pipeline.bus)

    for attempt in (1, 3, 9):
        delivery = Delivery("plangate.executor", "plan.approved", {}, attempt, redelivered=False)
        with pytest.raises(NotReady, match="lacks the tools stock_level; handed on"):
            executor(approved, delivery)


def test_an_executor_says_it_still_offers_its_tools_at_most_every_thirty_seconds(
    store: Store,
) -> None:
    """The sweep calls it every few seconds; the rows are written at most twice a minute."""
    publish_catalog(store, [READ])
    with store.session() as session:
        session.execute(update(ToolCatalogRow).values(updated_at=utcnow() - timedelta(hours=1)))

    keep_offering(store)  # published just now: not yet
    with store.reading() as session:
        stale = session.get_one(ToolCatalogRow, READ.name).updated_at
    catalog_module._offered.at -= timedelta(seconds=31)
    keep_offering(store)
    with store.reading() as session:
        fresh = session.get_one(ToolCatalogRow, READ.name).updated_at

    assert utcnow() - stale > timedelta(minutes=59)
    assert utcnow() - fresh < timedelta(seconds=5)


def test_a_plan_handed_on_for_ten_minutes_is_tried_as_one_no_executor_can_run(
    pipeline: Pipeline,
) -> None:
    """Tools split between executors, none with all of a plan's: each offered lately, each
    executor handed the plan on to the other, for ever. Ten minutes after the approval was made,
    it is handed back as lacking (an attempt each), then its goal fails saying why."""
    stock = ToolSpec(name="stock_level", effect="read", idempotent=True)
    publish_catalog(pipeline.store, [stock])  # offered lately, by an executor lacking others
    plan = Plan(
        plan_id="p-split", goal_id="g-split", revision=1, steps=[Step(id="s", tool="stock_level")]
    )
    approved = sign_approval(load_or_create_signer(pipeline.settings), plan)
    old = approved.model_copy(update={"occurred_at": utcnow() - timedelta(minutes=11)})
    executor = build_handler("executor", pipeline.settings, pipeline.store, pipeline.bus)

    def delivered(attempt: int) -> Delivery:
        return Delivery("plangate.executor", "plan.approved", {}, attempt, redelivered=False)

    with pytest.raises(NotReady):
        executor(approved, delivered(1))
    with pytest.raises(Retry) as handed_back:
        executor(old, delivered(1))
    with pytest.raises(Reject) as refused:
        executor(old, delivered(3))

    assert not isinstance(handed_back.value, NotReady)
    assert "no running executor offers with the plan's other tools" in str(refused.value)


def test_a_previews_plan_waits_for_an_executor_with_its_tools_however_long(
    pipeline: Pipeline,
) -> None:
    """A preview whose tools no running executor offered was dead-lettered after its tries:
    the review said "not ready yet" for good, even once an executor with them was back. It
    waits (no attempt used, 30 s at a time), as long as its plan is held."""
    from executor_worker.lacking_tools import KEY_WAIT, hand_back_if_lacking

    stock = ToolSpec(name="stock_level", effect="read", idempotent=True)
    publish_catalog(pipeline.store, [stock])
    with pipeline.store.session() as session:  # no executor has offered it for an hour
        session.execute(update(ToolCatalogRow).values(updated_at=utcnow() - timedelta(hours=1)))
    plan = Plan(
        plan_id="p-wait", goal_id="g-wait", revision=1, steps=[Step(id="s", tool="stock_level")]
    )
    registry = build_handler("executor", pipeline.settings, pipeline.store, pipeline.bus)._registry
    long_ago = utcnow() - timedelta(hours=2)

    with pytest.raises(NotReady) as waits:
        hand_back_if_lacking(plan, registry, pipeline.store, 9, long_ago, gives_up=False)

    assert waits.value.delay == KEY_WAIT
    assert "waiting for one" in str(waits.value)


def notify_with_severity(pipeline: Pipeline) -> tuple[Plan, Callable[[int, PlanApproved], None]]:
    """Return a plan for the newer `notify_oncall` (a required `severity`), and what delivers it
    to an executor offering the older one, after the newer's executor published it last."""
    executor = build_handler("executor", pipeline.settings, pipeline.store, pipeline.bus)
    older = executor._registry.catalog()["notify_oncall"]
    newer = older.model_copy(
        update={
            "args_schema": {
                "type": "object",
                "properties": {"message": {"type": "string"}, "severity": {"type": "string"}},
                "required": ["message", "severity"],
                "additionalProperties": False,
            }
        }
    )
    publish_catalog(pipeline.store, [newer])  # the other executor, started since
    plan = Plan(
        plan_id="p-versions",
        goal_id="g-versions",
        revision=1,
        steps=[Step(id="page", tool="notify_oncall", args={"message": "hi", "severity": "high"})],
    )

    def deliver(attempt: int, approved: PlanApproved) -> None:
        delivery = Delivery("plangate.executor", "plan.approved", {}, attempt, redelivered=False)
        executor(approved, delivery)

    return plan, deliver


def test_a_plan_made_for_another_version_of_a_tool_is_handed_on_to_the_executor_offering_it(
    pipeline: Pipeline,
) -> None:
    """Given two executors offering different versions of `notify_oncall` (a rollout: the
    newer takes a required `severity`), the newer's spec in the catalog,
    When a plan approved with `severity` reaches the executor with the older version,
    Then it hands the plan on, without using an attempt, saying it offers another version of
    the tool: one such goal in two failed "the plan is invalid: ... [bad_args]" after a person
    had approved it, while the executor with the plan's version ran.
    """
    plan, deliver = notify_with_severity(pipeline)
    approved = sign_approval(load_or_create_signer(pipeline.settings), plan)

    for attempt in (1, 3, 9):
        with pytest.raises(NotReady, match="offers other versions of notify_oncall; handed on"):
            deliver(attempt, approved)


def test_a_plan_for_another_version_no_executor_ran_in_ten_minutes_fails_naming_the_tool(
    pipeline: Pipeline,
) -> None:
    """Given the same rollout, When the plan approved ten minutes ago still reaches only
    executors with the older version, Then it is handed back twice, then refused saying that
    executors offer different versions of `notify_oncall`, what its arguments lacked here,
    and what to do."""
    plan, deliver = notify_with_severity(pipeline)
    approved = sign_approval(load_or_create_signer(pipeline.settings), plan)
    old = approved.model_copy(update={"occurred_at": utcnow() - timedelta(minutes=11)})

    for attempt in (1, 2):
        with pytest.raises(Retry, match="offers other versions of notify_oncall"):
            deliver(attempt, old)
    with pytest.raises(Reject) as refused:
        deliver(3, old)

    said = str(refused.value)
    assert "executors offer different versions of notify_oncall" in said
    assert "give every executor the same version" in said
    assert "step 'page': args" in said
    assert "severity" in said


def test_a_plan_invalid_for_every_version_fails_at_once_though_a_description_differs(
    pipeline: Pipeline,
) -> None:
    """Given executors whose `notify_oncall` differs in its description only, When a plan
    whose `ticket_count` step has arguments no version takes reaches one, Then its goal is
    refused at once as invalid: not handed round for ten minutes for a tool it did not fault."""
    executor = build_handler("executor", pipeline.settings, pipeline.store, pipeline.bus)
    described = executor._registry.catalog()["notify_oncall"].model_copy(
        update={"description": "Page the on-call engineer (v2)."}
    )
    publish_catalog(pipeline.store, [described])
    plan = Plan(
        plan_id="p-invalid",
        goal_id="g-invalid",
        revision=1,
        steps=[
            Step(id="count", tool="ticket_count", args={"queue": 7}),
            Step(id="page", tool="notify_oncall", args={"message": "hi"}),
        ],
    )
    approved = sign_approval(load_or_create_signer(pipeline.settings), plan)
    delivery = Delivery("plangate.executor", "plan.approved", {}, 1, redelivered=False)

    with pytest.raises(Reject) as refused:
        executor(approved, delivery)

    assert "the plan is invalid: step 'count'" in str(refused.value)
    assert "versions" not in str(refused.value)


@pytest.mark.postgres
def test_executors_publishing_a_new_tool_at_once_both_start(postgres_database_url: str) -> None:
    """Given an empty catalog and another executor inserting `ticket_count` (its transaction not
    committed yet: executors of a Deployment start together once the migration ran),
    When this executor publishes the same tool (its look finds no row; its insert waits for the
    other's transaction), Then once the other commits, this one's publication succeeds (it
    exited 1 on a duplicate key, restarted by the kubelet) and the catalog has the tool once."""
    other, this = open_store(postgres_database_url), open_store(postgres_database_url)
    admin = make_url(postgres_database_url).set(drivername="postgresql")
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            publish_catalog(this, [READ])
        except BaseException as exc:
            failures.append(exc)

    publisher = threading.Thread(target=publish)
    try:
        with (
            psycopg.connect(admin.render_as_string(False), autocommit=True) as watcher,
            other.session() as session,
        ):
            session.add(ToolCatalogRow(name=READ.name, spec=READ.model_dump(mode="json")))
            session.flush()
            publisher.start()
            eventually(
                lambda: watcher.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                ).fetchone(),
                timeout=10,
                what="this executor's insert waiting for the other's",
            )
        publisher.join(timeout=10)
        assert not publisher.is_alive()
        assert failures == []
        assert load_catalog(this) == {"ticket_count": READ}
    finally:
        other.close()
        this.close()
