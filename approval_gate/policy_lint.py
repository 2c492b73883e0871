"""What a policy names that the deployment does not have: likely typos, said before they bite.

A rule compares the plan with names (`s.tool == "wire_transfer"`, `"money" in s.tags`,
`history.count("refund", "1h")`). Misspelt, the rule compiles and never matches: a deny rule
then denies nothing, and a later approve rule releases what it was written to stop. A hold
that asks a role no reviewer has, or more approvals than there are reviewers who may give
them, holds every plan it meets until it expires. Neither is wrong CEL, and a tool may be
published after the policy is written, so these are warnings (by `plangate policy check`
and `test`, and in the gate's log), not a refusal to load. The names are read from the
expression's tokens: a check for likely mistakes, not a proof of what can match.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from approval_gate.policy import Policy, Rule
from approval_gate.policy_context import UNKNOWN_TOOL_TAG
from plangate.reviewers import Reviewers
from schemas import Catalog
from schemas.cel_check import call_literals, cel_tokens

log = logging.getLogger(__name__)
LOOK_EVERY_SECONDS = 1.0
Token = tuple[str, str]
EFFECTS = ("read", "write")
SHOWN_NAMES = 8  # of the catalog, in a warning: enough to spot the right spelling


def policy_warnings(
    policy: Policy, catalog: Catalog | None = None, reviewers: Reviewers | None = None
) -> list[str]:
    """Return what each rule names that `catalog` and `reviewers` do not have (each optional)."""
    warnings: list[str] = []
    everything: Rule | None = None  # the first rule that matches every plan, if any
    for rule in policy.rules:
        where = f"rule {rule.name!r} (line {rule.line})"
        constant = _constant(rule.match)
        if everything is not None:
            # Never tried: a deny written below an approve-everything rule denies nothing.
            warnings.append(
                f"{where} can never decide: rule {everything.name!r} (line {everything.line}) "
                "before it matches every plan; move it above, or narrow that rule"
            )
        elif constant is False:
            warnings.append(f"{where} matches no plan (its match is false)")
        if constant is True and everything is None:
            everything = rule
        if catalog:
            warnings.extend(f"{where} {said}" for said in _unknown_names(rule.match, catalog))
        if reviewers is not None and rule.action == "hold":
            warnings.extend(f"{where} {said}" for said in _unreachable_hold(rule, reviewers))
    return warnings


def _constant(match: str) -> bool | None:
    """Return the match's value when it is the literal `true` or `false`, else None."""
    tokens = [text for _, text in cel_tokens(match)]
    while len(tokens) >= 2 and tokens[0] == "(" and tokens[-1] == ")":
        tokens = tokens[1:-1]
    return {"true": True, "false": False}.get(tokens[0]) if len(tokens) == 1 else None


class PolicyWarnings:
    """Logs what a policy names that the catalog lacks, once per policy version and catalog.

    For the gate, which sees both at each decision: a warning is said when a policy, a catalog
    or a reviewers file first meets it, not at every decision. A policy version is looked at
    again at most once a second: reading the reviewers file's state is a file system call,
    which every decision made.
    """

    def __init__(self) -> None:
        self._seen: set[tuple[str, tuple[int, ...], int]] = set()
        self._said: set[str] = set()
        self._looked: tuple[str, float] = ("", 0.0)  # the policy version, and when

    def check(
        self,
        policy: Policy,
        catalog: Catalog,
        reviewers: Callable[[], Reviewers | None] = lambda: None,
    ) -> None:
        """Log each new warning of `policy` against `catalog` and `reviewers()` (where known)."""
        now = time.monotonic()
        version, looked = self._looked
        if version == policy.version and now - looked < LOOK_EVERY_SECONDS:
            return
        self._looked = (policy.version, now)
        known = reviewers()
        key = (policy.version, tuple(map(id, catalog.values())), id(known))
        if key in self._seen:
            return
        if len(self._seen) > 64:  # catalogs republished often: bounded, said again at worst
            self._seen.clear()
        self._seen.add(key)
        for warning in policy_warnings(policy, catalog, known):
            if warning not in self._said:
                self._said.add(warning)
                log.warning("policy %s (%s): %s", policy.version, policy.source, warning)


def _unknown_names(match: str, catalog: Catalog) -> Iterator[str]:
    tokens = cel_tokens(match)
    tags = {tag for spec in catalog.values() for tag in spec.tags} | {UNKNOWN_TOOL_TAG}
    tools = sorted(catalog)
    for name in sorted(set(_compared(tokens, "tool")) | set(_history_tools(match))):
        if name not in catalog:
            yield (
                f"names the tool {name!r}, which is not in the catalog ({_some(tools)}): it "
                f"never matches a plan calling it{_did_you_mean(name, tools)}"
            )
    # A tag no tool has yet is a rule written ahead (the default policy denies `destructive`
    # tools wherever there are some): only one spelt almost as a tag that exists is said.
    for tag in sorted(set(_tags(tokens)) - tags):
        close = difflib.get_close_matches(tag, sorted(tags), n=1, cutoff=0.75)
        if close:
            yield (
                f"names the tag {tag!r}, which no tool of the catalog has; did you mean "
                f"{close[0]!r}? (it never matches)"
            )
    for effect in sorted(set(_compared(tokens, "effect"))):
        if effect not in EFFECTS:
            yield f"compares a step's effect with {effect!r}, which is none (read or write)"


def _unreachable_hold(rule: Rule, reviewers: Reviewers) -> Iterator[str]:
    people = [r.name for r in reviewers if rule.requires_role in (None, *r.roles)]
    if rule.requires_role is not None and not people:
        yield (
            f"asks the role {rule.requires_role!r}, which no reviewer has: nobody can approve "
            "what it holds (`plangate reviewers add NAME --role ROLE`), so it expires"
        )
    elif not people:
        yield (
            "holds plans for a person, but no reviewer is listed: nobody can approve what it "
            "holds (`plangate reviewers add NAME`), so it expires"
        )
    elif len(people) < rule.approvals:
        who = "1 reviewer" if len(people) == 1 else f"{len(people)} reviewers"
        yield (
            f"asks {rule.approvals} approvals, but only {who} may give them: what it holds "
            "expires unapproved"
        )


def _compared(tokens: Sequence[Token], field: str) -> Iterator[str]:
    """Yield the strings a step's `field` is compared with (`==`, `!=`, `in [...]`), either side.

    A step's: `s.tool` (a comprehension's variable) or `plan.steps[0].tool`, not `s.args.tool`
    or `goal.metadata.effect`, which are the plan's own words.
    """
    for at, token in enumerate(tokens):
        if token != ("name", field) or not _of_a_step(tokens, at):
            continue
        after = [text for _, text in tokens[at + 1 : at + 3]]
        if after in (["=", "="], ["!", "="]):
            yield from _strings(tokens[at + 3 : at + 4])
        elif after[:2] == ["in", "["]:
            end = next((i for i in range(at + 3, len(tokens)) if tokens[i][1] == "]"), at + 3)
            yield from _strings(tokens[at + 3 : end])
        start = _chain_start(tokens, at)  # `"x" == s.tool`, `"x" == plan.steps[0].tool`
        if start >= 3 and [text for _, text in tokens[start - 2 : start]] in (
            ["=", "="],
            ["!", "="],
        ):
            yield from _strings(tokens[start - 3 : start - 2])


def _chain_start(tokens: Sequence[Token], at: int) -> int:
    """Return where the member chain ending at `at` begins (`plan` of `plan.steps[0].tool`)."""
    start = at
    while start > 0 and (
        tokens[start - 1][0] in ("name", "number") or tokens[start - 1][1] in (".", "[", "]")
    ):
        start -= 1
    return start


def _of_a_step(tokens: Sequence[Token], at: int) -> bool:
    """Say whether the member at `at` is read off a step: `var.` or `].` just before it."""
    if at < 2 or tokens[at - 1] != ("punct", "."):
        return False
    owner = tokens[at - 2]
    if owner == ("punct", "]"):
        return True
    return owner[0] == "name" and (at < 3 or tokens[at - 3] != ("punct", "."))


def _tags(tokens: Sequence[Token]) -> Iterator[str]:
    """Yield the strings tested with `"tag" in x.tags`."""
    for at, token in enumerate(tokens):
        tested = token[0] == "string" and tokens[at + 1 : at + 2] == [("name", "in")]
        if tested and _chain_ends_in(tokens, at + 2, "tags"):
            yield from _strings([token])


def _chain_ends_in(tokens: Sequence[Token], start: int, member: str) -> bool:
    """Say whether the member chain at `start` (`s.tags`, `plan.steps[0].tags`) ends in `member`."""
    last = None
    for kind, text in tokens[start:]:
        if kind not in ("name", "number") and text not in (".", "[", "]"):
            break
        last = (kind, text)
    return last == ("name", member)


def _history_tools(match: str) -> Iterator[str]:
    for function in ("count", "sum"):
        for args in call_literals(match, "history", function):
            if args and args[0] is not None:
                yield args[0]


def _strings(tokens: Sequence[Token]) -> Iterator[str]:
    for kind, text in tokens:
        plain = text[:1] in ("'", '"') and not text.startswith(("'''", '"""'))
        if kind == "string" and plain and "\\" not in text:
            yield text[1:-1]


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else "; check the spelling"


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (", …" if len(names) > SHOWN_NAMES else "") if names else "none"
