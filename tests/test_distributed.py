"""Distributed mode: separate worker processes on a real Redis, and nothing lost when they die."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from plangate.bus import STAGES, Bus, Envelope
from plangate.demo.tools import read_notifications
from plangate.errors import BrokerUnavailable
from plangate.reviewers import add_reviewer
from tests.conftest import SEED_GOAL
from tests.fleet import FAST_SWEEPS, Fleet
from tests.servers import (
    accepts_connections,
    free_port,
    missing,
    rabbitmqctl,
    stop_process,
    wait_until_ready,
)
from tests.support import call, eventually

pytestmark = pytest.mark.redis

APPROVE_ALL = """
rules:
  - name: approve-everything
    match: "true"
    action: approve
    reason: the distributed tests approve every plan
"""


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    """A migrated SQLite store, a policy that approves everything, and no workers yet."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        broker_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'plangate.db'}",
        folder=tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    upgrade = fleet.plangate("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    try:
        yield fleet
    finally:
        fleet.stop_all()


def submit_and_wait(fleet: Fleet, goal: str = SEED_GOAL, timeout: float = 40) -> dict[str, object]:
    done = fleet.plangate("submit", goal, "--wait", "--json", "--timeout", str(timeout))
    assert done.stdout, f"submit printed nothing: {done.stderr}\n{fleet.logs()}"
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["exit_code"] = done.returncode
    return result


def notifications(fleet: Fleet) -> list[dict[str, object]]:
    return read_notifications(fleet.folder / "notifications.jsonl")


def test_the_seed_goal_runs_through_three_worker_processes(fleet: Fleet) -> None:
    """Given a planner, a gate and an executor as separate processes on Redis,
    When the seed goal is submitted with `plangate submit --wait`,
    Then it completes, every step ran, and on-call was notified once.
    """
    fleet.start_all()

    result = submit_and_wait(fleet)

    assert result["status"] == "completed", fleet.logs()
    assert result["exit_code"] == 0
    assert result["steps"] == {"count": "succeeded", "sla": "succeeded", "notify": "succeeded"}
    assert len(notifications(fleet)) == 1
    assert fleet.stop_all() == [0, 0, 0]


def test_status_shows_the_plan_decision_and_steps(fleet: Fleet) -> None:
    fleet.start_all()
    result = submit_and_wait(fleet)

    shown = fleet.plangate("status", str(result["goal_id"]))

    assert shown.returncode == 0
    assert "completed" in shown.stdout
    assert "approve-everything" in shown.stdout
    assert re.search(r"step notify \(\w+\): succeeded", shown.stdout), shown.stdout


def test_the_same_idempotency_key_twice_yields_one_goal(fleet: Fleet) -> None:
    first = fleet.plangate("submit", SEED_GOAL, "--key", "ticket-42", "--json")
    second = fleet.plangate("submit", SEED_GOAL, "--key", "ticket-42", "--json")

    assert json.loads(first.stdout)["goal_id"] == json.loads(second.stdout)["goal_id"]
    assert "was already submitted with the key 'ticket-42'" in second.stderr


def test_an_idempotency_key_given_again_with_another_text_is_refused(fleet: Fleet) -> None:
    """The key names the first goal; answering with it would pass that goal's outcome off as
    this one's (it did, exit 0). Refused in one line, exit 2, and no goal is made."""
    first = fleet.plangate("submit", SEED_GOAL, "--key", "ticket-43", "--json")
    other = fleet.plangate("submit", "Restart the billing service", "--key", "ticket-43")

    assert other.returncode == 2, other.stdout + other.stderr
    goal_id = json.loads(first.stdout)["goal_id"]
    assert other.stderr.startswith(
        "error: the idempotency key 'ticket-43' was given to another goal, or to this one with "
        "another text or metadata"
    ), other.stderr
    listed = fleet.plangate("goals", "list", "--json").stdout.splitlines()
    assert [json.loads(line)["goal_id"] for line in listed] == [goal_id]


def test_a_worker_refuses_to_start_on_an_old_schema(tmp_path: Path, redis_url: str) -> None:
    """Given a database nobody migrated, a worker exits 2 and says to run `plangate db upgrade`."""
    fleet = Fleet(redis_url, f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path)
    process = fleet.start("planner")
    code = process.wait(timeout=30)
    fleet.stop_all()

    assert code == 2
    assert "plangate db upgrade" in fleet.logs()


def test_sigterm_lets_workers_finish_and_exit_0(fleet: Fleet) -> None:
    fleet.start_all()
    submit_and_wait(fleet)

    assert fleet.stop_all() == [0, 0, 0]


@pytest.mark.parametrize(
    ("stage", "point"),
    [
        (stage, point)
        for stage in ("planner", "gate", "executor")
        for point in ("after_receive", "after_commit", "after_publish")
    ]
    + [("executor", "mid_tool")],
)
def test_a_worker_killed_at_any_point_loses_no_goal_and_repeats_no_effect(
    fleet: Fleet, stage: str, point: str
) -> None:
    """Given a worker that SIGKILLs itself at one point of handling a message,
    When a replacement worker of that stage starts,
    Then the goal still completes and on-call was notified exactly once.
    """
    marker = fleet.folder / "fault-fired"
    doomed = fleet.start(stage, PLANGATE_FAULT=point, PLANGATE_FAULT_MARKER=str(marker))
    for other in {"planner", "gate", "executor"} - {stage}:
        fleet.start(other)

    submitted = fleet.plangate("submit", SEED_GOAL, "--json")
    goal_id = json.loads(submitted.stdout)["goal_id"]
    assert doomed.wait(timeout=30) == -9, fleet.logs()
    fleet.start(stage)
    waited = fleet.plangate("status", goal_id, "--json")
    deadline = time.monotonic() + 40
    while json.loads(waited.stdout)["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        waited = fleet.plangate("status", goal_id, "--json")

    assert json.loads(waited.stdout)["status"] == "completed", fleet.logs()
    assert len(notifications(fleet)) == 1


class _Trap:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_bad_input_on_every_queue_is_dead_lettered_and_no_pickle_is_loaded(fleet: Fleet) -> None:
    """Given workers of every stage on Redis,
    When malformed messages (a pickle, a compression header, NaN, truncated JSON) are put
    straight onto each stage's routing key,
    Then each lands in the dead-letter queue with its reason, the pickle was never loaded,
    `plangate dlq list` shows them, and the workers go on to complete the seed goal.
    """
    import pickle

    from kombu import Connection, Exchange, Producer

    fleet.start_all()
    topology = Bus(fleet.broker_url, fleet.namespace)
    topology.declare()  # the queues exist before anything is published: nothing is dropped
    topology.close()
    trap = fleet.folder / "pickle-was-loaded"
    bodies: list[tuple[bytes, str, dict[str, str], str]] = [
        (pickle.dumps(_Trap(trap)), "application/x-python-serialize", {}, "content type"),
        (b'{"schema_version": 1}', "application/json", {"compression": "zlib"}, "compress"),
        (b'{"schema_version": 1, "n": NaN}', "application/json", {}, "NaN"),
        (b'{"schema_version": 1, "type": "goal.sub', "application/json", {}, "not valid JSON"),
    ]
    keys = ("goal.submitted", "plan.proposed", "plan.approved")
    with Connection(fleet.broker_url) as connection:
        producer = Producer(connection.channel(), exchange=Exchange(fleet.namespace, "topic"))
        for key in keys:
            for body, content_type, headers, _ in bodies:
                encoding = "utf-8" if content_type == "application/json" else "binary"
                producer.publish(
                    body,
                    routing_key=key,
                    content_type=content_type,
                    content_encoding=encoding,
                    headers=headers,
                )

    expected = len(keys) * len(bodies)
    deadline = time.monotonic() + 20
    letters: list[dict[str, str]] = []
    while len(letters) < expected and time.monotonic() < deadline:
        listed = fleet.plangate("dlq", "list", "--json")
        letters = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    assert len(letters) == expected, fleet.logs()
    for key in keys:
        reasons = [letter["reason"] for letter in letters if letter["routing_key"] == key]
        for _, _, _, why in bodies:
            assert any(why in reason for reason in reasons), (key, why, reasons)
    assert not trap.exists()
    assert submit_and_wait(fleet)["status"] == "completed"

    # One is shown by the start of its id, as goals and plans are; an id naming none is exit 2.
    shown = fleet.plangate("dlq", "show", letters[0]["message_id"][:10])
    assert json.loads(shown.stdout)["message_id"] == letters[0]["message_id"], shown.stderr
    unknown_id = fleet.plangate("dlq", "show", "f" * 40)
    assert unknown_id.returncode == 2
    assert f"'{'f' * 40}' names no dead letter" in unknown_id.stderr

    # Read, they can be purged: one by its id, then (once confirmed with --yes: no terminal
    # answers a prompt here, and an answer piped in is refused, exit 2) all of them. The start
    # of an id names it here too, as in `dlq show` (purge took only whole ids).
    first = letters[0]["message_id"]
    one = fleet.plangate("dlq", "purge", first[:10])
    assert (one.returncode, one.stdout.strip()) == (0, "removed 1 dead letter"), one.stderr
    unknown = fleet.plangate("dlq", "purge", first)
    assert unknown.returncode == 2
    assert "no such dead letter" in unknown.stderr
    declined = subprocess.run(
        [sys.executable, "-m", "plangate", "dlq", "purge", "--all"],
        env=fleet.env(),
        input="n\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert declined.returncode == 2
    assert declined.stderr.startswith("error: --all removes every dead letter"), declined.stderr
    assert "add --yes" in declined.stderr
    everything = fleet.plangate("dlq", "purge", "--all", "--yes")
    assert everything.stdout.strip() == f"removed {expected - 1} dead letters"
    assert fleet.plangate("dlq", "list", "--json").stdout.strip() == ""


class OwnRedis:
    """A redis-server of one test's own, that the test stops and starts.

    It saves nothing by itself; what a test saves (`SAVE`) is loaded again at the restart.
    """

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server")
        process = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.folder), "--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_ready("redis-server", lambda: accepts_connections(self.port), process, [], 10)
        return process

    def kill(self) -> None:
        """Kill it: whatever it held is gone."""
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start it again on the same port: empty, unless the test saved what it held."""
        self.process = self._start()

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path)
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture
def fleet_on_own_redis(tmp_path: Path, own_redis: OwnRedis) -> Iterator[Fleet]:
    """Workers to come, on a Redis the test may kill, with a store migrated already."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        own_redis.url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    try:
        yield fleet
    finally:
        fleet.stop_all()


def statuses_once_settled(fleet: Fleet, goal_ids: list[str], timeout: float = 90) -> dict[str, str]:
    """Poll `plangate status` until every goal completed (or time is up); return the statuses."""
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {
            goal_id: json.loads(fleet.plangate("status", goal_id, "--json").stdout)["status"]
            for goal_id in goal_ids
        }
        if all(status == "completed" for status in statuses.values()):
            break
        time.sleep(0.5)
    return statuses


# Twelve `plangate submit` and a `plangate status` per goal and poll: processes, not threads,
# so a loaded machine needs more than the default minute.
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_redis_restarted_without_persistence_loses_no_goal(
    fleet_on_own_redis: Fleet, own_redis: OwnRedis
) -> None:
    """Given workers on a Redis that keeps nothing on disk, and goals in flight,
    When Redis is killed and restarted empty,
    Then the workers reconnect, the reconciler sends every stalled goal's last message again,
    and every goal completes with one notification each.
    """
    fleet = fleet_on_own_redis
    fleet.start_all()
    goal_ids = []
    for number in range(12):
        submitted = fleet.plangate("submit", f"{SEED_GOAL} #{number}", "--json")
        goal_ids.append(json.loads(submitted.stdout)["goal_id"])
        if number == 5:  # half of them are in flight when Redis dies
            own_redis.kill()
            own_redis.restart()

    statuses = statuses_once_settled(fleet, goal_ids)

    assert set(statuses.values()) == {"completed"}, (statuses, fleet.logs())
    notified = [n["goal_id"] for n in notifications(fleet)]
    assert sorted(notified) == sorted(goal_ids)


def test_a_goal_submitted_while_the_broker_is_down_is_stored_and_runs_once_it_is_back(
    fleet_on_own_redis: Fleet, own_redis: OwnRedis
) -> None:
    """Given running workers and a Redis that is down,
    When a goal is submitted with `plangate submit`,
    Then the command returns within seconds with the goal's id and a warning that it waits,
    and once Redis is back a worker's relay sends it on and it completes, once.
    """
    fleet = fleet_on_own_redis
    fleet.start_all()
    own_redis.kill()

    submitted = fleet.plangate("submit", SEED_GOAL, "--json", timeout=30)

    assert submitted.returncode == 0, submitted.stderr
    # Said once, by the command, with what it kept (not again by the relay's log).
    assert submitted.stderr.count("cannot reach the broker") == 1, submitted.stderr
    assert "is stored" in submitted.stderr
    goal_id = json.loads(submitted.stdout)["goal_id"]
    own_redis.restart()
    assert statuses_once_settled(fleet, [goal_id]) == {goal_id: "completed"}, fleet.logs()
    assert [n["goal_id"] for n in notifications(fleet)] == [goal_id]


def test_a_view_reads_the_broker_again_and_again_on_one_connection(own_redis: OwnRedis) -> None:
    """Given a worker's view of the broker (what its sweeps read),
    When it reads every queue's depth and the held goals twenty times,
    Then the broker saw no new connection after the first read, and each read saw the queue.
    """
    bus = Bus(own_redis.url, "view")
    try:
        bus.publish_one(Envelope("goal.submitted", b"{}", {}))
        with redis.Redis.from_url(own_redis.url) as server, bus.view() as view:
            view.held_goal_ids()
            connections = server.info("stats")["total_connections_received"]
            for _ in range(20):
                assert view.held_goal_ids() == set()
                depths = {stage: view.queue_depth(stage) for stage in STAGES}
                assert depths == {"planner": 1, "gate": 0, "executor": 0}
            assert server.info("stats")["total_connections_received"] == connections
    finally:
        bus.close()


def test_a_view_that_lost_the_broker_says_so_and_reads_again_once_it_is_back(
    own_redis: OwnRedis,
) -> None:
    """Given a view that has read the broker,
    When the broker dies, then comes back (empty),
    Then a read meanwhile raises BrokerUnavailable, and the next read after answers.
    """
    bus = Bus(own_redis.url, "view", retry_policy={"max_retries": 0})
    try:
        with bus.view() as view:
            assert view.queue_depth("planner") == 0
            own_redis.kill()
            with pytest.raises(BrokerUnavailable, match="cannot reach the broker"):
                view.queue_depth("planner")
            own_redis.restart()
            bus.publish_one(Envelope("goal.submitted", b"{}", {}))
            assert view.queue_depth("planner") == 1
    finally:
        bus.close()


def test_a_publish_rides_out_a_broker_that_is_back_within_its_retries(
    own_redis: OwnRedis,
) -> None:
    """Given a publisher whose broker has gone,
    When the broker is back (with what it held) a second into the publish,
    Then the publish is still trying then (it did not fail at its first attempt), and it
    delivers the message once the broker is back.
    """
    # Retries for about ten seconds: room for the restart on a loaded machine.
    patient = {"max_retries": 10, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1}
    bus = Bus(own_redis.url, "blip", retry_policy=patient)
    failures: list[BaseException] = []
    connected, broker_gone = threading.Event(), threading.Event()

    def publish() -> None:
        try:
            bus.declare()  # this thread's connection is open, and the queues exist
            connected.set()
            broker_gone.wait()
            bus.publish_one(Envelope("goal.submitted", b"{}", {}))
        except BaseException as exc:  # handed to the test, which fails on it
            failures.append(exc)

    try:
        publisher = threading.Thread(target=publish)
        publisher.start()
        assert connected.wait(10), failures
        # Kept on disk and loaded again at the restart: the queues and their bindings are
        # still there, as on a Redis that persists (an empty one drops what has no queue).
        with redis.Redis.from_url(own_redis.url) as client:
            client.save()
        own_redis.kill()
        broker_gone.set()
        publisher.join(1.0)
        assert not failures
        assert publisher.is_alive(), "the publish gave up at its first attempt"
        own_redis.restart()
        publisher.join(15)
        assert not failures
        assert not publisher.is_alive(), "the publish did not end once the broker was back"
        assert bus.queue_depth("planner") == 1
    finally:
        bus.close()


def test_a_publish_gives_up_while_the_broker_is_down_and_works_again_once_it_is_back(
    own_redis: OwnRedis,
) -> None:
    bus = Bus(own_redis.url, "outage")
    try:
        bus.publish_one(Envelope("goal.submitted", b"{}", {}))  # this thread's connection is open
        own_redis.kill()
        with pytest.raises(BrokerUnavailable, match="cannot reach the broker at redis://"):
            bus.publish_one(Envelope("goal.submitted", b"{}", {}))
        own_redis.restart()
        bus.publish_one(Envelope("goal.submitted", b"{}", {}))
        assert bus.queue_depth("planner") == 1  # the restarted Redis holds only the last one
    finally:
        bus.close()


def test_the_seed_goal_runs_through_three_worker_processes_on_postgres(
    tmp_path: Path, redis_url: str, postgres_database_url: str
) -> None:
    """Given the three stages as separate processes on Redis and PostgreSQL,
    When the seed goal is submitted with `plangate submit --wait`, then it completes once.
    """
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        redis_url,
        postgres_database_url,
        tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    try:
        assert fleet.plangate("db", "upgrade").returncode == 0
        fleet.start_all()
        result = submit_and_wait(fleet)
        assert result["status"] == "completed", fleet.logs()
        assert len(notifications(fleet)) == 1
    finally:
        fleet.stop_all()


def with_chaos_tools(fleet: Fleet) -> Path:
    """Give the fleet the chaos tools and playbook; return the file their effects go to."""
    root = Path(__file__).resolve().parent.parent
    effects = fleet.folder / "effects.jsonl"
    fleet.extra_env.update(
        PLANGATE_PLAYBOOK_FILE=str(root / "tests" / "data" / "chaos_playbook.yaml"),
        PLANGATE_TOOLS="tests.chaos_tools",
        PYTHONPATH=str(root),
        CHAOS_EFFECTS=str(effects),
        CHAOS_DUPLICATES=str(fleet.folder / "duplicates.jsonl"),
    )
    return effects


def test_a_non_idempotent_write_cut_off_mid_call_is_marked_unknown_not_run_again(
    fleet: Fleet,
) -> None:
    """Given an executor that dies right after a non-idempotent tool did its effect,
    When another executor picks the plan up,
    Then the step is `unknown`, the goal stops for a person with that reason, and the effect
    happened exactly once; settled by a person as happened, the run completes without it.
    """
    effects = with_chaos_tools(fleet)
    marker = fleet.folder / "fault-fired"
    doomed = fleet.start("executor", PLANGATE_FAULT="mid_tool", PLANGATE_FAULT_MARKER=str(marker))
    fleet.start("planner")
    fleet.start("gate")
    goal_id = json.loads(fleet.plangate("submit", "charge 5", "--json").stdout)["goal_id"]
    assert doomed.wait(timeout=30) == -9, fleet.logs()
    fleet.start("executor")

    deadline = time.monotonic() + 40
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        status = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
        if status["status"] in ("needs_attention", "failed", "completed"):
            break
        time.sleep(0.3)

    assert status["status"] == "needs_attention", fleet.logs()
    assert status["steps"] == {"charge": "unknown"}
    assert "may or may not have happened" in str(status["reason"])
    assert len(effects.read_text().splitlines()) == 1

    reviewers = fleet.folder / "reviewers.yaml"
    as_carol = {
        "PLANGATE_REVIEWERS_FILE": str(reviewers),
        "PLANGATE_REVIEWER_TOKEN": add_reviewer(reviewers, "carol", []),
    }
    listed = fleet.plangate("review", "unsettled", "--json", **as_carol)
    assert listed.returncode == 0, listed.stderr
    (checked,) = json.loads(listed.stdout)  # the call carol checked
    settled = fleet.plangate(
        *("review", "settle", str(status["plan_id"]), "charge"),
        *("--since", str(checked["since"]), "--happened"),
        **as_carol,
    )
    assert settled.returncode == 0, settled.stderr
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and status["status"] != "completed":
        status = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
        time.sleep(0.3)
    assert status["status"] == "completed", fleet.logs()
    assert status["steps"] == {"charge": "succeeded"}
    assert len(effects.read_text().splitlines()) == 1


def test_a_cancelled_goal_s_write_cut_off_mid_call_is_marked_unknown_for_a_person(
    fleet: Fleet,
) -> None:
    """Given an executor killed in the middle of a non-idempotent write,
    When its goal is cancelled before any executor comes back to it,
    Then once the claim's lease has run out the executors' sweep marks the write `unknown`:
    `review unsettled` lists it, and a person's "it happened" is recorded while the goal stays
    cancelled. No run resumes a cancelled goal, so the write showed `running` for ever and no
    one was asked whether the card was charged.
    """
    effects = with_chaos_tools(fleet)
    reviewers = fleet.folder / "reviewers.yaml"
    as_carol = {
        "PLANGATE_REVIEWERS_FILE": str(reviewers),
        "PLANGATE_REVIEWER_TOKEN": add_reviewer(reviewers, "carol", []),
    }
    marker = fleet.folder / "fault-fired"
    doomed = fleet.start("executor", PLANGATE_FAULT="mid_tool", PLANGATE_FAULT_MARKER=str(marker))
    fleet.start("planner")
    fleet.start("gate")
    goal_id = json.loads(fleet.plangate("submit", "charge 5", "--json").stdout)["goal_id"]
    assert doomed.wait(timeout=30) == -9, fleet.logs()
    cancelled = fleet.plangate("goals", "cancel", goal_id, "--reason", "wrong card", **as_carol)
    assert cancelled.returncode == 0, cancelled.stderr
    fleet.start("executor")

    def unsettled() -> list[dict[str, object]]:
        listed = fleet.plangate("review", "unsettled", "--json", **as_carol)
        assert listed.returncode == 0, listed.stderr
        return list(json.loads(listed.stdout))

    eventually(unsettled, timeout=40, what="the write marked unknown")
    (waiting,) = unsettled()
    assert (waiting["goal_id"], waiting["step_id"]) == (goal_id, "charge")
    assert "after the goal was cancelled" in str(waiting["reason"])
    settled = fleet.plangate(
        *("review", "settle", str(waiting["plan_id"]), "charge"),
        *("--since", str(waiting["since"]), "--happened"),
        **as_carol,
    )
    assert settled.returncode == 0, settled.stderr
    assert "its goal was cancelled, so nothing resumes" in settled.stdout
    status = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
    assert (status["status"], status["steps"]) == ("cancelled", {"charge": "succeeded"})
    assert len(effects.read_text().splitlines()) == 1
    assert unsettled() == []


def test_ctrl_c_while_submit_waits_names_the_goal_that_goes_on(fleet: Fleet) -> None:
    """Given no worker running,
    When `plangate submit --wait` is interrupted (Ctrl-C) while it waits,
    Then it exits 130 saying that only the waiting stopped and which goal goes on: it printed
    "^C" alone, and the user, not knowing the goal was stored, submitted it again.
    """
    with subprocess.Popen(
        [sys.executable, "-m", "plangate", "submit", SEED_GOAL, "--wait"],
        env=fleet.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        listed = lambda: fleet.plangate("goals", "list", "--json").stdout.splitlines()  # noqa: E731
        eventually(listed, timeout=30, what="the goal stored")
        waiting.send_signal(signal.SIGINT)
        _, stderr = waiting.communicate(timeout=30)

    (goal,) = [json.loads(line) for line in listed()]
    assert waiting.returncode == 130, stderr
    assert f"only the waiting stopped; goal {goal['goal_id']} goes on" in stderr


def test_submit_prints_the_goal_id_alone_on_stdout_for_a_script(fleet: Fleet) -> None:
    """`GOAL=$(plangate submit ...)` then `plangate status $GOAL`: stdout held the state's lines
    ("goal 1f3a...: submitted", its plan...), though `--help` says it prints the goal id."""
    submitted = fleet.plangate("submit", SEED_GOAL)

    assert submitted.returncode == 0, submitted.stderr
    goal_id = submitted.stdout.strip()
    assert f"goal {goal_id}: submitted" in submitted.stderr
    status = fleet.plangate("status", goal_id, "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["goal_id"] == goal_id


def broker_up(port: int) -> float | None:
    """Read a worker's `plangate_broker_up` from its /metrics (None: not there, or no answer)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    found = re.search(r'^plangate_broker_up\{stage="planner"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


# Long enough for dozens of sweeps (every 0.5 s here) and for the consume loop's backoff to
# reach its most: with a most of 30 s, it was then in a wait of 30 s, and came back 25-30 s
# after Redis did (each of its tries takes about 2 s).
OUTAGE_SECONDS = 45


@pytest.mark.timeout(180)
def test_a_worker_that_lost_the_broker_says_so_in_a_gauge_and_says_when_it_is_back(
    fleet_on_own_redis: Fleet, own_redis: OwnRedis
) -> None:
    """Given a planner worker consuming from Redis, When Redis dies for 45 s and comes back,
    Then `plangate_broker_up` is 0 while it is gone (an alert asks for it) and 1 again within
    15 s of its return (it tries every 10 s at most: at 30 s it came back 28 s later), and
    the log says the stage consumes again: /metrics still answered 200 with nothing of the
    broker in it, no alert fired on a quiet system, and the "lost the broker" warnings just
    stopped. The outage is said once by the sweep and once by the consume loop, not at each
    sweep (8 lines a minute) or each reconnect."""
    port = free_port()
    fleet_on_own_redis.start("planner", PLANGATE_METRICS_PORT=str(port))
    eventually(lambda: broker_up(port) == 1, what="the gauge at 1", timeout=30)

    own_redis.kill()
    eventually(lambda: broker_up(port) == 0, what="the gauge at 0", timeout=30)
    time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for
    own_redis.restart()
    back = time.monotonic()

    eventually(lambda: broker_up(port) == 1, what="the gauge at 1 again", timeout=60)
    assert time.monotonic() - back < 15
    eventually(
        lambda: (
            "the planner consumes again: the broker answered after" in fleet_on_own_redis.logs()
        ),
        what="the log line saying it is back",
        timeout=10,
    )
    log = (fleet_on_own_redis.folder / "planner-0.log").read_text()
    assert log.count("sweep skipped: the planner lost the broker") == 1, log
    assert log.count("; reconnecting in") == 1, log
    assert "sweeps skipped for" not in log  # said again only after a minute


@pytest.mark.rabbitmq
@pytest.mark.timeout(180)
def test_on_rabbitmq_a_broker_down_is_never_said_to_answer_again_until_it_does(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    """Given a planner consuming from RabbitMQ, When RabbitMQ stops for ten sweeps and starts
    again,
    Then the gauge is 0 while it is down, and the log says "answers the planner's reads
    again" only after it is back, and the outage once: each sweep's first read asks nothing
    of RabbitMQ, and the log said the broker answered at every sweep of the outage, between
    the warnings."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(APPROVE_ALL)
    fleet = Fleet(
        rabbitmq_url,
        f"sqlite:///{tmp_path / 'plangate.db'}",
        tmp_path,
        extra_env={"PLANGATE_POLICY_FILE": str(policy), **FAST_SWEEPS},
    )
    assert fleet.plangate("db", "upgrade").returncode == 0
    port = free_port()
    fleet.start("planner", PLANGATE_METRICS_PORT=str(port))
    lost = "sweep skipped: the planner lost the broker"
    back = "the broker answers the planner's reads again"
    try:
        eventually(lambda: broker_up(port) == 1, what="the gauge at 1", timeout=30)
        rabbitmqctl(rabbitmq_url, "stop_app")
        try:
            eventually(lambda: lost in fleet.logs(), what="a sweep lost", timeout=60)
            time.sleep(5)  # the outage itself, ten sweeps long: nothing to wait for
            assert broker_up(port) == 0
            during = fleet.logs()
        finally:
            rabbitmqctl(rabbitmq_url, "start_app")
        eventually(lambda: broker_up(port) == 1, what="the gauge at 1 again", timeout=90)
        eventually(lambda: back in fleet.logs(), what="the log saying it is back", timeout=30)
    finally:
        fleet.stop_all()

    assert back not in during[during.index(lost) :], during
    assert during.count(lost) == 1, during


@pytest.mark.timeout(240)
def test_a_broker_that_hangs_is_a_zero_in_the_gauge_too(
    fleet_on_own_redis: Fleet, own_redis: OwnRedis
) -> None:
    """Given a planner consuming from Redis, When Redis hangs (SIGSTOP: as a frozen host, or a
    network dropping its packets), Then `plangate_broker_up` goes to 0, and to 1 once it goes
    on: the consume loop waits on a read that never fails, and the gauge stayed 1 for minutes
    while /readyz said the broker did not answer."""
    port = free_port()
    fleet_on_own_redis.start("planner", PLANGATE_METRICS_PORT=str(port))
    eventually(lambda: broker_up(port) == 1, what="the gauge at 1", timeout=30)

    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        eventually(lambda: broker_up(port) == 0, what="the gauge at 0", timeout=90)
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    eventually(lambda: broker_up(port) == 1, what="the gauge at 1 again", timeout=90)
    logs = fleet_on_own_redis.logs()
    assert "sweep skipped: the planner lost the broker" in logs  # as the alert says to look
    eventually(
        lambda: "the broker answers the planner's reads again" in fleet_on_own_redis.logs(),
        what="the log saying it is back",
        timeout=30,
    )


def doomed_executor(fleet: Fleet, name: str) -> subprocess.Popen[bytes]:
    """Start an executor that SIGKILLs itself once, right after its write's effect."""
    marker = str(fleet.folder / f"fault-{name}")
    return fleet.start("executor", PLANGATE_FAULT="mid_tool", PLANGATE_FAULT_MARKER=marker)


@pytest.mark.slow
@pytest.mark.timeout(150)  # five processes, two of them killed mid-call
def test_a_stale_settle_posted_to_serve_after_the_write_ran_again_is_refused(
    fleet: Fleet,
) -> None:
    """Given a charge cut off mid-call by a SIGKILL, found unknown by another executor, and
    settled "did not happen" through serve's API (in a process of its own: tested in one
    process, the refusal could not show what an attacker found across processes) with the
    `unknown_since` alice read there,
    When the charge, run again, is cut off again and found unknown once more, and alice's
    settle is posted again (a tab left open, a retry),
    Then serve answers 409 saying the step was called again since, nothing runs a third time,
    and a settle naming the call now listed resumes the run to completed: two charges in all.
    """
    effects = with_chaos_tools(fleet)
    reviewers = fleet.folder / "reviewers.yaml"
    added = fleet.plangate("reviewers", "add", "alice", "--file", str(reviewers))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    first = doomed_executor(fleet, "first")
    fleet.start("planner")
    fleet.start("gate")
    url = fleet.ready(fleet.serve_free(PLANGATE_REVIEWERS_FILE=str(reviewers)))
    goal_id = json.loads(fleet.plangate("submit", "charge 5", "--json").stdout)["goal_id"]
    assert first.wait(timeout=30) == -9, fleet.logs()
    second = doomed_executor(fleet, "second")

    def unsettled() -> list[dict[str, Any]]:
        code, listed = call(f"{url}/api/v1/reviews/unsettled", token)
        assert code == 200, listed
        return [step for step in listed if step["goal_id"] == goal_id]

    [checked] = eventually(unsettled, timeout=40, what="the charge found unknown")
    settle_url = f"{url}/api/v1/reviews/{checked['plan_id']}/steps/charge/settle"
    stale = {"happened": False, "unknown_since": checked["since"], "comment": "not at the bank"}
    code, said = call(settle_url, token, stale)
    assert code == 200, said
    assert second.wait(timeout=30) == -9, fleet.logs()  # the charge ran again, cut off again
    fleet.start("executor")
    [now] = eventually(
        lambda: [s for s in unsettled() if s["since"] != checked["since"]],
        timeout=40,
        what="the second call found unknown",
    )

    code, refused = call(settle_url, token, stale)
    assert code == 409, refused
    assert "called again since you looked" in json.dumps(refused)

    code, said = call(settle_url, token, {"happened": True, "unknown_since": now["since"]})
    assert code == 200, said

    def completed() -> dict[str, Any] | None:
        status: dict[str, Any] = json.loads(fleet.plangate("status", goal_id, "--json").stdout)
        return status if status["status"] == "completed" else None

    status = eventually(completed, timeout=40, what="the goal completed")
    assert status["steps"] == {"charge": "succeeded"}
    assert len(effects.read_text().splitlines()) == 2, fleet.logs()
