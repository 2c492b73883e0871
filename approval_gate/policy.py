"""The gate's policy: ordered CEL rules over a plan; first match wins, no match holds."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import cel

from approval_gate.decision_memo import DecisionMemo
from approval_gate.policy_context import RULE_VARIABLES, policy_context
from approval_gate.policy_file import (
    MAX_POLICY_BYTES,
    Mode,
    PolicyCase,
    RuleAction,
    read_policy_file,
    too_large,
)
from approval_gate.rule_checks import check_match
from approval_gate.rule_cost import RuleCost
from plangate.config import Settings
from plangate.errors import ConfigError, PolicyError
from plangate.small_files import read_bytes
from schemas import Decision, Plan, PlanInvalid, ToolSpec, validate_plan
from schemas.cel_check import (
    Reads,
    compiled,
    expression_reads,
)
from schemas.cel_cost import DataSize, data_size

NO_MATCH_REASON = "no rule matched; held for a person"
# The CEL library warns of each Python function that failed (history.sum): said already, with
# the rule, in the decision's reason; on stderr it was a bare line per decision.
logging.getLogger("cel").setLevel(logging.ERROR)
_PAST_TENSE = {"approve": "approved", "deny": "denied", "hold": "held"}
# action, rule, reason, and the other rules whose terms a hold takes on
Outcome = tuple[RuleAction, str | None, str, tuple[str, ...]]


class HistoryReader(Protocol):
    """What answers `history.count` and `history.sum` (`approval_gate.history.History`)."""

    def functions(self) -> Mapping[str, Callable[..., Any]]:
        """Return the CEL functions by name."""


@dataclass(frozen=True)
class Rule:
    """A rule with its compiled CEL program and its (1-based) line in the policy file."""

    name: str
    match: str
    action: RuleAction
    reason: str
    line: int | None
    program: Any = field(repr=False, compare=False)
    requires_role: str | None = None  # a person deciding a plan this rule held needs this role
    hold_ttl_seconds: int | None = None  # a plan this rule held expires after this long
    preview: bool = False  # a plan this rule held gets a dry run (reads run, writes only say)
    approvals: int = 1  # distinct reviewers who must approve a plan this rule held
    approver_not_submitter: bool = False  # the goal's submitter may not be one of them
    cost: RuleCost = field(default=RuleCost(frozenset(), 0), compare=False)  # how its work grows


@dataclass(frozen=True)
class HoldTerms:
    """What a person's decision on a held plan needs, from the rules that held it."""

    roles: tuple[str, ...] = ()  # each of them
    approvals: int = 1  # distinct reviewers
    approver_not_submitter: bool = False
    ttl_seconds: int | None = None  # None: the gate's PLANGATE_HOLD_TTL_SECONDS
    preview: bool = False

    @classmethod
    def of(cls, rules: list[Rule]) -> HoldTerms:
        """Return the strictest of each term the rules ask (most often, one rule's)."""
        ttls = [rule.hold_ttl_seconds for rule in rules if rule.hold_ttl_seconds is not None]
        return cls(
            roles=tuple(sorted({rule.requires_role for rule in rules if rule.requires_role})),
            approvals=max((rule.approvals for rule in rules), default=1),
            approver_not_submitter=any(rule.approver_not_submitter for rule in rules),
            ttl_seconds=min(ttls) if ttls else None,
            preview=any(rule.preview for rule in rules),
        )

    def said(self) -> str:
        """Return what a reviewer needs, as people read it ("" when anyone may decide alone)."""
        asks = [f"role {role}" for role in self.roles]
        asks += [f"{self.approvals} approvals"] if self.approvals > 1 else []
        asks += ["not the submitter"] if self.approver_not_submitter else []
        return f" ({', '.join(asks)})" if asks else ""


@dataclass(frozen=True)
class Policy:
    """A loaded policy: compiled rules, a mode, and a version (a hash of the file's bytes)."""

    rules: tuple[Rule, ...]
    mode: Mode
    version: str
    source: str
    tests: tuple[PolicyCase, ...] = ()
    # The file's text and its whole digest (the version is its start): the gate records both.
    text: str = field(default="", repr=False, compare=False)
    digest: str = field(default="", repr=False, compare=False)
    memo: DecisionMemo[Outcome] = field(
        default_factory=DecisionMemo, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Load and compile a policy file; PolicyError if it cannot be read or is wrong."""
        try:
            data = read_bytes(Path(path), MAX_POLICY_BYTES)
        except OSError as exc:
            if exc.errno == errno.EFBIG:  # said as any other bound of a policy is
                raise too_large(str(path)) from exc
            raise PolicyError(f"cannot read the policy file {path}: {exc.strerror}") from exc
        return cls.from_bytes(data, source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> Policy:
        """Load and compile a policy from YAML text; PolicyError if it is wrong."""
        return cls.from_bytes(text.encode("utf-8"), source=source)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> Policy:
        """Load and compile a policy from the bytes of a YAML file; PolicyError if it is wrong."""
        spec, lines = read_policy_file(data, source)
        rules = []
        for rule, line in zip(spec.rules, lines, strict=True):
            cost = check_match(rule.match, rule.name, line, source)
            program = compiled(rule.match)
            rules.append(
                Rule(
                    rule.name,
                    rule.match,
                    rule.action,
                    rule.reason,
                    line,
                    program,
                    requires_role=rule.requires_role,
                    hold_ttl_seconds=rule.hold_ttl_seconds,
                    preview=rule.preview,
                    approvals=rule.approvals,
                    approver_not_submitter=rule.approver_not_submitter,
                    cost=cost,
                )
            )
        hexdigest = hashlib.sha256(data).hexdigest()
        version, digest = f"sha256:{hexdigest[:16]}", f"sha256:{hexdigest}"
        text = data.decode("utf-8")  # read_policy_file refused bytes that are no UTF-8
        tests = tuple(spec.tests)
        return cls(tuple(rules), spec.mode, version, source, tests, text, digest)

    def rule(self, name: str | None) -> Rule | None:
        """Return the rule called `name`, if this policy has one."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def wants_preview(self, decision: Decision) -> bool:
        """Return True if `decision` holds the plan by a rule that asks for a dry run."""
        return decision.action == "hold" and self.hold_terms(decision).preview

    @functools.cached_property
    def variables(self) -> frozenset[str]:
        """The variables any rule reads: only these are built and handed to CEL per decision."""
        return frozenset(name for rule in self.rules for name in rule.program.variables())

    @functools.cached_property
    def reads(self) -> Reads:
        """What the rules read of the variables: only those fields of the plan are built."""
        return functools.reduce(
            Reads.__or__, (expression_reads(rule.match, RULE_VARIABLES) for rule in self.rules)
        )

    @property
    def reads_history(self) -> bool:
        """Whether a rule counts approved plans (`history`): its decisions are serialised."""
        return "history" in self.variables

    def decide(
        self,
        plan: Plan,
        catalog: Mapping[str, ToolSpec],
        goal_text: str = "",
        goal_metadata: Mapping[str, str] | None = None,
        history: HistoryReader | None = None,
    ) -> Decision:
        """Decide a plan: the first matching rule's action, else hold; shadow mode holds all.

        `history` answers rules that count approved plans; without it such a rule holds.
        """
        # Converting values into CEL is most of a decision's time: the catalog alone, which few
        # rules read, cost more than the plan. So only what some rule reads is built, down to
        # the fields of the plan and its steps.
        variables = policy_context(
            plan, catalog, goal_text, goal_metadata, needed=self.variables, reads=self.reads
        )
        if self.reads_history:
            variables["history"] = {}
            functions = history.functions() if history is not None else {}
            action, rule, reason, also = self._evaluate(variables, functions)
        else:
            action, rule, reason, also = self.memo.outcome(
                variables, lambda: self._evaluate(variables, {})
            )
        shadow_action: RuleAction | None = None
        if self.mode == "shadow":
            said = f"rule {rule!r}: {reason}" if rule else reason
            reason = f"shadow mode: the policy would have {_PAST_TENSE[action]} ({said})"
            action, shadow_action = "hold", action
        decision = Decision(
            action=action,
            decided_by="policy",
            rule=rule,
            reason=reason,
            policy_version=self.version,
            shadow_action=shadow_action,
        )
        return decision.holding_also_for(also) if also else decision

    def hold_terms(self, decision: Decision) -> HoldTerms:
        """Return what a hold of `decision` asks.

        Its rule's terms, or the strictest of each of the rules it was held for, where rules
        before the one that matched were broken.
        """
        named = (decision.rule, *decision.also_held_for)
        return HoldTerms.of([rule for name in named if (rule := self.rule(name)) is not None])

    def decide_as_gate(
        self,
        plan: Plan,
        catalog: Mapping[str, ToolSpec],
        goal_text: str = "",
        goal_metadata: Mapping[str, str] | None = None,
        history: HistoryReader | None = None,
    ) -> Decision:
        """Decide as the gate does: a plan invalid for the catalog is denied, else `decide`."""
        try:
            validate_plan(plan, catalog)
        except PlanInvalid as invalid:
            return Decision(
                action="deny", decided_by="gate", reason=str(invalid), policy_version=self.version
            )
        return self.decide(plan, catalog, goal_text, goal_metadata, history)

    def _evaluate(
        self, variables: dict[str, Any], functions: Mapping[str, Callable[..., Any]]
    ) -> Outcome:
        try:  # converted to CEL values once per decision, not once per rule
            context = cel.Context(variables=variables, functions=dict(functions))
        except Exception as exc:  # a value CEL cannot hold: no rule can judge this plan
            return "hold", None, _held("the plan", exc), ()
        # Measured only for a rule whose work may exceed a step per value, over what it reads
        # (a large catalog is no reason to hold a plan for a rule that never reads it).
        sizes: dict[frozenset[str], DataSize] = {}
        # Rules that could not say whether they match, and whether an error stopped them (a
        # deny rule that failed denies) rather than the plan's size (too large: held, as said).
        broken: list[tuple[Rule, str, bool]] = []
        for rule in self.rules:
            if rule.cost.bounded:
                reads = frozenset(rule.program.variables())
                if reads not in sizes:
                    sizes[reads] = data_size({k: v for k, v in variables.items() if k in reads})
                too_costly = rule.cost.refusal(sizes[reads])
                if too_costly is not None:
                    broken.append((rule, f"rule {rule.name!r}: {too_costly}", False))
                    continue
            try:
                result = rule.program.execute(context)
            except Exception as exc:
                result = exc
            if not isinstance(result, bool):
                broken.append((rule, _held(f"rule {rule.name!r}", result), True))
                continue
            if result:
                if broken:
                    return _after_broken(broken, rule)
                return rule.action, rule.name, rule.reason, ()
        if broken:
            return _after_broken(broken, None)
        return "hold", None, NO_MATCH_REASON, ()


def load_policy(settings: Settings) -> Policy:
    """Load `settings.policy_file`, or the packaged default policy when it is not set."""
    path = settings.policy_file
    if path is None:
        data = resources.files("approval_gate").joinpath("default_policy.yaml").read_bytes()
        return Policy.from_bytes(data, source="the packaged default_policy.yaml")
    if not path.is_file():
        hint = "fix the path, or unset it to use the default policy"
        raise ConfigError(f"PLANGATE_POLICY_FILE names {path}, which is not a file; {hint}")
    return Policy.load(path)


def _after_broken(broken: list[tuple[Rule, str, bool]], matched: Rule | None) -> Outcome:
    """Decide a plan some rules could not judge, before `matched` (the first that matched).

    Fail closed, never weaker than any rule that may have been the one: each broken rule may
    have matched, and `matched` decides if none did. A deny among them denies (a broken deny
    turned into a hold was released by reviewers), but for a deny rule the plan was too large
    to evaluate (held, as `policy check` says); anything else is held, asking what every one
    of those rules asks. Held by the first broken rule alone, a refund whose amount a
    read fills in (text when the gate decides) was held with none of the roles and
    approvals the refunds' rule after it asks, and one reviewer without them released it.
    """
    (first, said, _), *others = broken
    for rule, why, failed in broken:
        if failed and rule.action == "deny":
            return "deny", rule.name, f"{why.removesuffix(_HELD)}; denied, as it may match", ()
    if matched is not None and matched.action == "deny":
        return "deny", matched.name, f"{matched.reason} ({said.removesuffix(_HELD)})", ()
    candidates = [rule for rule, _, _ in others] + ([matched] if matched is not None else [])
    holding = (rule.name for rule in candidates if rule.action == "hold")
    also = tuple(dict.fromkeys(name for name in holding if name != first.name))
    if not also:
        return "hold", first.name, said, ()
    named = ", ".join(repr(name) for name in also)
    return "hold", first.name, f"{said}, asking what rules {named} ask too", also


_HELD = "; held for a person"


def _held(subject: str, outcome: object) -> str:
    if isinstance(outcome, Exception):
        problem = f"{type(outcome).__name__}: {outcome}"
    else:
        problem = f"it returned {type(outcome).__name__}, not a bool"
    problem = " ".join(problem.split())[:300]  # a reason is read by a person, not a parser
    if "No such overload" in problem:  # most often, not the number types CEL's words suggest
        problem += (
            "; an argument a ${ref} fills in is text until its step runs: a rule that "
            "approves may ask `type(x) in [int, double] && double(x) < 100.0`; one that "
            "holds or denies must let text match: `!(type(x) in [int, double]) || "
            "double(x) >= 1000.0`"
        )
    return f"{subject} could not be evaluated ({problem}){_HELD}"
