"""Run by release 011f34a (schema 0013): a four-eyes approval made, one half made, one held.

Run with PYTHONPATH at that release's tree (`tests/test_upgrade_from_0013.py`); prints the
goal ids, by what was done to them.
"""

import json
import sys
from pathlib import Path

from sqlalchemy import select

from plangate.config import Settings
from plangate.embedded import Pipeline
from plangate.store import PlanRow

folder = Path(sys.argv[1])
(folder / "policy.yaml").write_text("""\
rules:
  - name: pages-need-two-from-finance
    match: 'plan.steps.exists(s, s.tool == "notify_oncall")'
    action: hold
    reason: paging costs money; two people from finance decide
    requires_role: finance
    approvals: 2
""")
settings = Settings(
    data_dir=folder / "data",
    policy_file=folder / "policy.yaml",
    namespace="old",
)
SEED = "Check Jira ticket count, compare with SLA, and notify on-call engineer if breached"
finance = frozenset({"finance"})
ids: dict[str, str] = {}
with Pipeline(settings) as pipeline:
    for name in ("approved", "half", "held"):
        goal = pipeline.submit(SEED).goal_id
        pipeline.wait_for(goal, {"held"}, timeout=20)
        ids[name] = goal

    def plan_of(goal: str) -> str:
        with pipeline.store.session() as s:
            return s.execute(select(PlanRow.plan_id).where(PlanRow.goal_id == goal)).scalar_one()

    pipeline.approve(plan_of(ids["approved"]), "alice", None, finance)
    pipeline.approve(plan_of(ids["approved"]), "bob", None, finance)
    pipeline.wait_for(ids["approved"], timeout=20)
    pipeline.approve(plan_of(ids["half"]), "alice", None, finance)
print(json.dumps(ids))
