"""Reviewers and their tokens: the file keeps hashes only; `plangate reviewers` manages it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from plangate.errors import ConfigError
from plangate.reviewers import (
    Reviewer,
    Reviewers,
    ReviewersFile,
    add_reviewer,
    hash_token,
    read_file,
    remove_reviewer,
)

REPO = str(Path(__file__).resolve().parents[1])


def reviewers_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `plangate reviewers ARGS` with no PLANGATE_* settings but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PLANGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "plangate", "reviewers", *args],
        capture_output=True,
        text=True,
        env=clean | {"PYTHONPATH": REPO, "COLUMNS": "200", **env},
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_a_hashed_reviewers_file_authenticates_by_token(tmp_path: Path) -> None:
    """Given a reviewers file with alice's token hash and roles,
    When her token is presented, she is found with her roles; any other token finds nobody,
    and the token shows in no representation of her.
    """
    token = "a-random-token-of-plenty-of-entropy"
    path = tmp_path / "reviewers.yaml"
    path.write_text(
        f"reviewers:\n  - {{name: alice, token_sha256: {hash_token(token)}, roles: [finance]}}\n"
    )

    reviewers = Reviewers.from_file(path)

    alice = reviewers.identify(token)
    assert alice == Reviewer("alice", frozenset({"finance"}))
    assert reviewers.identify("another-token-entirely") is None
    assert reviewers.identify("") is None
    assert token not in repr(alice)
    assert hash_token(token) not in repr(alice)


def test_a_plaintext_token_in_the_file_is_refused_saying_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "reviewers.yaml"
    path.write_text("reviewers:\n  - {name: eve, token: plaintext-secret-0123456789}\n")

    with pytest.raises(ConfigError) as refused:
        Reviewers.from_file(path)

    message = str(refused.value)
    assert "\n" not in message
    assert "plaintext" in message
    assert "plangate reviewers add" in message
    assert "plaintext-secret-0123456789" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("reviewers:\n  - {name: bob, token_sha256: not-a-hash}\n", "token_sha256"),
        ("reviewers:\n  - {name: bob, token_sha256: " + "a" * 64 + ", colour: red}\n", "colour"),
        (
            "reviewers:\n  - {name: bob, token_sha256: " + "a" * 64 + "}\n"
            "  - {name: bob, token_sha256: " + "b" * 64 + "}\n",
            "twice",
        ),
        ("reviewers: [\n", "is not valid YAML"),
    ],
)
def test_a_malformed_reviewers_file_is_one_line_naming_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "reviewers.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=problem) as refused:
        read_file(path)

    assert str(path) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_reviewers_add_prints_the_token_once_and_the_file_keeps_only_its_hash(
    tmp_path: Path,
) -> None:
    """When `plangate reviewers add alice --role finance` runs,
    Then stdout is the token alone on its line, stderr says it is not stored, the file is
    the owner's only (0600) and holds the token's hash but not the token, and the token
    authenticates alice with her role.
    """
    path = tmp_path / "team" / "reviewers.yaml"

    added = reviewers_cli(tmp_path, "add", "alice", "--role", "finance", "--file", str(path))

    assert added.returncode == 0, added.stderr
    token = added.stdout.removesuffix("\n")
    assert "\n" not in token
    assert len(token) >= 43
    assert "not stored" in added.stderr
    assert token not in added.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert hash_token(token) in text
    alice = Reviewers.from_file(path).identify(token)
    assert alice == Reviewer("alice", frozenset({"finance"}))


def test_reviewers_list_shows_names_and_roles_and_remove_takes_the_token_away(
    tmp_path: Path,
) -> None:
    path = tmp_path / "reviewers.yaml"
    env = {"PLANGATE_REVIEWERS_FILE": str(path)}
    alice = reviewers_cli(tmp_path, "add", "alice", "--role", "finance", **env).stdout.strip()
    reviewers_cli(tmp_path, "add", "bob", **env)

    listed = reviewers_cli(tmp_path, "list", "--json", **env)
    removed = reviewers_cli(tmp_path, "remove", "alice", **env)
    again = reviewers_cli(tmp_path, "remove", "alice", **env)

    assert json.loads(listed.stdout) == [
        {"name": "alice", "roles": ["finance"]},
        {"name": "bob", "roles": []},
    ]
    assert removed.returncode == 0, removed.stderr
    assert Reviewers.from_file(path).identify(alice) is None
    assert [r.name for r in read_file(path)] == ["bob"]
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"error: no reviewer 'alice' in {path}; `plangate reviewers list` names them"
    )


def test_reviewers_roles_changes_a_reviewer_s_roles_and_keeps_their_token(
    tmp_path: Path,
) -> None:
    """Given alice (finance) and bob,
    When `reviewers roles alice --role sre` and then `reviewers roles alice` (none) run,
    Then alice's token still names her, with sre and then no roles, bob is untouched, and a
    name not in the file or a role not spelled as roles are is refused in one line (a role
    changed only by editing the YAML by hand, or by remove and add, which replaced her token).
    """
    path = tmp_path / "reviewers.yaml"
    env = {"PLANGATE_REVIEWERS_FILE": str(path)}
    alice = reviewers_cli(tmp_path, "add", "alice", "--role", "finance", **env).stdout.strip()
    reviewers_cli(tmp_path, "add", "bob", "--role", "finance", **env)

    to_sre = reviewers_cli(tmp_path, "roles", "alice", "--role", "sre", **env)
    as_sre = Reviewers.from_file(path).identify(alice)
    to_none = reviewers_cli(tmp_path, "roles", "alice", **env)
    unknown = reviewers_cli(tmp_path, "roles", "Alicia", "--role", "sre", **env)
    bad_role = reviewers_cli(tmp_path, "roles", "alice", "--role", "on call", **env)

    assert to_sre.returncode == 0, to_sre.stderr
    assert to_sre.stdout.strip() == f"alice now has sre (had finance) in {path}"
    assert as_sre == Reviewer("alice", frozenset({"sre"}))
    assert to_none.stdout.strip() == f"alice now has no roles (had sre) in {path}"
    assert Reviewers.from_file(path).identify(alice) == Reviewer("alice", frozenset())
    assert json.loads(reviewers_cli(tmp_path, "list", "--json", **env).stdout) == [
        {"name": "alice", "roles": []},
        {"name": "bob", "roles": ["finance"]},
    ]
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        f"error: no reviewer 'Alicia' in {path}; `plangate reviewers list` names them"
    )
    assert bad_role.returncode == 2
    assert "'on call' is not a role" in bad_role.stderr


def test_reviewers_add_refuses_a_second_alice(tmp_path: Path) -> None:
    path = tmp_path / "reviewers.yaml"
    first = add_reviewer(path, "alice", ["finance"])

    second = reviewers_cli(tmp_path, "add", "alice", "--file", str(path))

    assert second.returncode == 2
    assert second.stdout == ""
    assert "alice is in" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert Reviewers.from_file(path).identify(first) is not None


def test_reviewers_without_a_file_says_to_set_it_or_pass_one(tmp_path: Path) -> None:
    result = reviewers_cli(tmp_path, "add", "alice")

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: which reviewers file? set PLANGATE_REVIEWERS_FILE (as `plangate serve` has it) "
        "or pass --file PATH"
    )


def test_reviewers_help_says_tokens_are_shown_once(tmp_path: Path) -> None:
    result = reviewers_cli(tmp_path, "add", "--help")

    assert result.returncode == 0
    assert "printed once" in result.stdout
    assert "--role ROLE" in result.stdout
    assert "PLANGATE_REVIEWERS_FILE" in result.stdout


def test_a_watched_reviewers_file_takes_changes_at_once(tmp_path: Path) -> None:
    """Given `serve`'s view of a reviewers file with alice and bob,
    When alice is removed, then the file is broken,
    Then alice is unknown at once; a broken file authenticates nobody (fail closed).
    """
    path = tmp_path / "reviewers.yaml"
    alice = add_reviewer(path, "alice", [])
    bob = add_reviewer(path, "bob", ["ops"])
    watched = ReviewersFile(path)
    assert watched.current().identify(alice) is not None

    remove_reviewer(path, "alice")

    assert watched.current().identify(alice) is None
    assert watched.current().identify(bob) == Reviewer("bob", frozenset({"ops"}))
    path.write_text("reviewers:\n  - {name: bob, token: " + bob + "}\n")
    assert watched.current().identify(bob) is None


def test_reviewers_added_at_the_same_moment_are_all_kept(tmp_path: Path) -> None:
    """Given a reviewers file and sixteen `add`s started at the same moment (a provisioning
    script adding people in parallel),
    Then every one of them is in the file afterwards; each read the file, added its reviewer
    and replaced the file, so the last to write dropped those written meanwhile, whose tokens
    were printed and then worked nowhere.
    """
    path = tmp_path / "reviewers.yaml"
    add_reviewer(path, "seed", [])
    names = [f"user{index}" for index in range(16)]
    start = threading.Barrier(len(names))

    def add(name: str) -> None:
        start.wait()
        add_reviewer(path, name, ["finance"])

    threads = [threading.Thread(target=add, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(r.name for r in read_file(path)) == sorted(["seed", *names])


@pytest.mark.parametrize(
    "spelled", ["Alice", "ALICE", "alice  "], ids=["capital", "upper", "spaces"]
)
def test_reviewers_add_refuses_alice_spelled_otherwise(tmp_path: Path, spelled: str) -> None:
    """Given alice in the reviewers file,
    When `Alice` (or `ALICE`, or `alice` with a space after) is added,
    Then it is refused in one line: each was another reviewer, whose approval made a second
    person's under a rule asking two ("approved by alice, Alice").
    """
    path = tmp_path / "reviewers.yaml"
    add_reviewer(path, "alice", ["finance"])

    again = reviewers_cli(tmp_path, "add", spelled, "--file", str(path))

    assert again.returncode == 2
    said = again.stderr.strip()
    assert len(said.splitlines()) == 1, said
    assert "told apart regardless of case" in said or "is not a reviewer name" in said, said
    assert [r.name for r in read_file(path)] == ["alice"]


def test_a_reviewers_file_naming_one_person_in_two_spellings_is_refused(tmp_path: Path) -> None:
    """Given a reviewers file written by hand with `bob` and `Bob`,
    Then reading it is refused, naming both: the gate would count their approvals as two."""
    path = tmp_path / "reviewers.yaml"
    path.write_text(
        "reviewers:\n"
        "  - {name: bob, token_sha256: " + "a" * 64 + "}\n"
        "  - {name: Bob, token_sha256: " + "b" * 64 + "}\n"
    )

    with pytest.raises(ConfigError, match="names a reviewer twice \\(as 'bob' and 'Bob'\\)"):
        read_file(path)


def test_a_file_naming_one_person_twice_is_mended_with_reviewers_remove(tmp_path: Path) -> None:
    """Given a file written before names were told apart regardless of case (`bob`, `Bob`, and
    `carol ` with a space after, which `add` took then),
    Then serve refuses it saying which command mends it, that command works (every command
    refused the file, `remove` too, so only an edit by hand could), and `carol ` still loads.
    """
    path = tmp_path / "reviewers.yaml"
    path.write_text(
        "reviewers:\n"
        "  - {name: bob, token_sha256: " + "a" * 64 + "}\n"
        "  - {name: Bob, token_sha256: " + "b" * 64 + "}\n"
        "  - {name: 'carol ', token_sha256: " + "c" * 64 + "}\n"
    )
    with pytest.raises(ConfigError, match="plangate reviewers remove Bob --file"):
        read_file(path)

    removed = reviewers_cli(tmp_path, "remove", "Bob", "--file", str(path))

    assert removed.returncode == 0, removed.stderr
    assert [r.name for r in read_file(path)] == ["bob", "carol "]
    gone = reviewers_cli(tmp_path, "remove", "CAROL", "--file", str(path))
    assert "did you mean 'carol '?" in gone.stderr


def test_a_role_no_rule_of_the_policy_asks_is_said_as_the_reviewer_is_given_it(
    tmp_path: Path,
) -> None:
    """Given a policy whose rule asks the role `finance` (PLANGATE_POLICY_FILE),
    When bob is added with `--role Finance`, then given `finance`,
    Then the first says no rule asks `Finance` and which roles the rules ask (it was taken in
    silence, and bob could approve nothing held for finance); the second says nothing."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n"
        "  - name: pages-for-finance\n"
        "    match: 'plan.steps.exists(s, s.tool == \"notify_oncall\")'\n"
        "    action: hold\n"
        "    reason: finance decides\n"
        "    requires_role: finance\n"
    )
    env = {
        "PLANGATE_REVIEWERS_FILE": str(tmp_path / "reviewers.yaml"),
        "PLANGATE_POLICY_FILE": str(policy),
    }

    added = reviewers_cli(tmp_path, "add", "bob", "--role", "Finance", **env)
    fixed = reviewers_cli(tmp_path, "roles", "bob", "--role", "finance", **env)

    assert added.returncode == 0, added.stderr
    assert "no rule of the policy" in added.stderr
    assert "asks the role(s) Finance; its rules ask: finance" in " ".join(added.stderr.split())
    assert fixed.returncode == 0, fixed.stderr
    assert "no rule of the policy" not in fixed.stderr
