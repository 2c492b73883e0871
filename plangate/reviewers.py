"""Reviewers: names and roles, each with a token whose SHA-256 hash (never the token) is kept.

The reviewers file (`PLANGATE_REVIEWERS_FILE`, YAML or JSON) reads
`reviewers: [{name: alice, token_sha256: <64 hex digits>, roles: [finance]}]`, and is written
by `plangate reviewers add` (which prints the token once). A token is checked by hashing it and
comparing the hash with every entry's in constant time.

Plain SHA-256, not a slow password hash, is enough here: a token is 256 random bits, which no
dictionary holds and no brute force reaches, so a stretched hash would only slow every request.
GitHub stores its API tokens the same way. A slow KDF protects low-entropy passwords.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import hmac
import logging
import os
import re
import secrets
import shlex
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plangate.errors import ConfigError
from plangate.file_watch import FileWatch
from plangate.person_words import register_token_hashes
from plangate.redaction import register_secret
from plangate.small_files import read_text

log = logging.getLogger(__name__)
REVIEWERS_FILE_VARIABLE = "PLANGATE_REVIEWERS_FILE"
# Not ending in a space: "bob " was a second reviewer beside "bob", each an approval. (A file
# written before keeps its names: read as they were, told apart by `person_key`.)
NAME_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9 ._@+-]{0,198}[A-Za-z0-9._@+-])?$"
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,199}$"
ROLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # as a policy rule's `requires_role`
_HEADER = (
    "# plangate reviewers, written by `plangate reviewers add|remove`. Only each token's\n"
    "# SHA-256 is kept: a lost token cannot be recovered; remove the reviewer and add again.\n"
)


def new_token() -> str:
    """Return a new reviewer token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Return the SHA-256 of a token, as 64 hex digits (what the reviewers file keeps)."""
    return hashlib.sha256(token.encode()).hexdigest()


def approval_proof(token_sha256: str, plan_id: str, plan_hash: str, reviewer: str) -> str:
    """Return what proves that `reviewer`, holding their token, approved this exact revision.

    An HMAC keyed by the token's hash, which only the token's holder and the reviewers file
    know. The gate, given the file, checks it before it signs: an approval written into the
    store by anyone else (the database's credentials and a reviewers file of their own are
    enough to record one) carries no proof that holds, and releases nothing.
    """
    message = "\n".join(("plangate approval v1", plan_id, plan_hash, reviewer)).encode()
    return hmac.new(token_sha256.encode(), message, hashlib.sha256).hexdigest()


def session_binding(token_sha256: str) -> str:
    """Return what a web session stores to stay bound to its reviewer's token.

    Not the token's hash itself: that keys the reviewer's approval proofs, and the sessions
    table is readable by whoever reads the database.
    """
    return hashlib.sha256(b"plangate session\n" + token_sha256.encode()).hexdigest()


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=FILE_NAME_PATTERN)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    roles: list[str] = Field(default_factory=list)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    reviewers: list[_Entry] = Field(default_factory=list)


@dataclass(frozen=True)
class Reviewer:
    """A person allowed to decide held plans: their name, roles and token hash."""

    name: str
    roles: frozenset[str] = frozenset()
    token_sha256: str = field(default="", repr=False, compare=False)

    @classmethod
    def with_token(cls, name: str, token: str, roles: Iterable[str] = ()) -> Reviewer:
        """Return a reviewer identified by `token` (kept only as its hash)."""
        return cls(name, frozenset(roles), hash_token(token))


class Reviewers:
    """The known reviewers; `identify` finds one by token, `by_hash` by a token's hash."""

    problem: str | None = None  # why the reviewers could not be read (a `ReviewersFile`)

    def __init__(self, reviewers: Sequence[Reviewer] = ()) -> None:
        self._reviewers = tuple(reviewers)
        # Any of their tokens pasted into a person's comment is redacted (`person_words`),
        # not the deciding reviewer's alone: alice's comment quoting bob's token handed it to
        # whoever reads the goal.
        register_token_hashes(reviewer.token_sha256 for reviewer in self._reviewers)

    def __len__(self) -> int:
        return len(self._reviewers)

    def __iter__(self) -> Iterator[Reviewer]:
        return iter(self._reviewers)

    def current(self) -> Reviewers:
        """Return these reviewers (a `ReviewersFile` re-reads its file here)."""
        return self

    @classmethod
    def from_file(cls, path: Path) -> Reviewers:
        """Read a reviewers file (ConfigError naming the file and the fix)."""
        return cls(read_file(path))

    def identify(self, token: str) -> Reviewer | None:
        """Return the reviewer whose token this is (None for an empty or unknown token).

        A reviewer's token is a secret from then on, redacted wherever plangate writes: one
        pasted into a comment was copied whole into the `review decision` span's reason. Not
        an unknown one: a stranger's guesses would grow the set without end.
        """
        found = self.by_hash(hash_token(token)) if token else None
        if found is not None:
            register_secret(token)
        return found

    def named(self, name: str) -> Reviewer | None:
        """Return the reviewer of this name, if the file lists one."""
        return next((reviewer for reviewer in self._reviewers if reviewer.name == name), None)

    def by_session_binding(self, binding: str) -> Reviewer | None:
        """Return the reviewer a web session's binding (`session_binding`) names, if listed."""
        found = None
        for reviewer in self._reviewers:
            if hmac.compare_digest(
                binding.encode(), session_binding(reviewer.token_sha256).encode()
            ):
                found = reviewer
        return found

    def by_hash(self, token_sha256: str) -> Reviewer | None:
        """Return the reviewer with this token hash, comparing against every entry in full."""
        found = None
        given = token_sha256.encode()
        for reviewer in self._reviewers:
            if hmac.compare_digest(given, reviewer.token_sha256.encode()):
                found = reviewer
        return found


class ReviewersFile:
    """A reviewers file read again whenever it changes, so a removed reviewer is out at once."""

    def __init__(self, path: Path, *, required: bool = True) -> None:
        """Read the file: a bad one stops the process at start.

        So does a missing one, unless not `required`: then nobody is known until it is written.
        """
        self.path = path
        self._lock = threading.Lock()
        self._reviewers = Reviewers()
        # Watched from before the first read: a change while it is read is seen next time.
        self._watch = FileWatch(path)
        if required or path.exists():
            self._reviewers = Reviewers.from_file(path)

    def current(self) -> Reviewers:
        """Return the reviewers as the file reads now; nobody while it is missing or invalid."""
        with self._lock:
            if self._watch.changed():
                try:
                    self._reviewers = Reviewers.from_file(self.path)
                except ConfigError as exc:
                    # Fail closed: an unreadable file authenticates nobody until it is fixed.
                    log.error("nobody can review until the reviewers file is fixed: %s", exc)
                    self._reviewers = Reviewers()
                    self._reviewers.problem = str(exc)
            return self._reviewers


def read_file(path: Path, *, repairing: bool = False) -> list[Reviewer]:
    """Return the reviewers a file lists; ConfigError (never echoing a token) if it is wrong.

    `repairing`: a file naming one person twice is read all the same, for `remove` to mend.
    """
    try:
        raw = yaml.safe_load(read_text(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the reviewers file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"the reviewers file {path} is not valid YAML{at}: {problem}") from None
    entries = (raw or {}).get("reviewers") if isinstance(raw, dict) else None
    if isinstance(entries, list) and any(isinstance(e, dict) and "token" in e for e in entries):
        raise ConfigError(
            f"the reviewers file {path} holds a plaintext `token:`; plangate keeps only token "
            "hashes: re-create each reviewer with `plangate reviewers add NAME --role ROLE` "
            "and hand out the new tokens"
        )
    try:
        parsed = _File.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"the reviewers file {path} is invalid ({problems}); write it with "
            "`plangate reviewers add NAME --role ROLE`"
        ) from None
    reviewers = [Reviewer(e.name, frozenset(e.roles), e.token_sha256) for e in parsed.reviewers]
    if not repairing:
        _check_unique(path, reviewers)
    return reviewers


def _check_unique(path: Path, reviewers: Sequence[Reviewer]) -> None:
    seen: dict[str, str] = {}
    hashes = [r.token_sha256 for r in reviewers]
    for reviewer in reviewers:
        first = seen.get(person_key(reviewer.name))
        if first is not None:
            also = "" if first == reviewer.name else f" (as {first!r} and {reviewer.name!r})"
            raise ConfigError(
                f"the reviewers file {path} names a reviewer twice{also}: names are told apart "
                "regardless of case and spacing, or each would count as another person's "
                f"approval; keep one entry each (`plangate reviewers remove "
                f"{shlex.quote(reviewer.name)} --file {shlex.quote(str(path))}`)"
            )
        seen[person_key(reviewer.name)] = reviewer.name
    if len(set(hashes)) != len(hashes):
        raise ConfigError(f"the reviewers file {path} has two reviewers with one token")


def person_key(name: str) -> str:
    """Return what two spellings of one person's name share: case, width and spaces aside.

    Reviewer names are told apart by it (`alice` and `Alice` were two reviewers, whose two
    approvals met a rule asking for two people), and a goal's submitter, as the submitting
    service spelled it (`CAROL`, `carol `), is matched with it.
    """
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def name_problem(name: str) -> str | None:
    """Say what is wrong with `name` as a reviewer's name, or None if nothing is."""
    if re.fullmatch(NAME_PATTERN, name):
        return None
    return (
        f"{name[:40]!r}{'…' if len(name) > 40 else ''} is not a reviewer name: letters, "
        "digits, spaces and ._@+- , up to 200 characters, starting with a letter or digit "
        "and not ending in a space"
    )


def terminal_reviewer() -> str:
    """Return who decides at this terminal when no `--reviewer` is given: the login, @terminal."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid, e.g. an arbitrary uid in a container
        login = "unknown"
    return f"{login}@terminal"


def add_reviewer(path: Path, name: str, roles: Iterable[str]) -> str:
    """Add a reviewer to the file (created if missing); return their new token, kept nowhere."""
    if problem := name_problem(name):
        raise ConfigError(problem)
    wanted = _checked_roles(roles)
    with _editing(path):
        reviewers = read_file(path) if path.exists() else []
        same = next((r.name for r in reviewers if person_key(r.name) == person_key(name)), None)
        if same == name:
            raise ConfigError(
                f"{name} is in {path} already; `plangate reviewers remove {shlex.quote(name)}` "
                "first to give them a new token"
            )
        if same is not None:
            raise ConfigError(
                f"{same!r} is in {path} already, and names are told apart regardless of case "
                f"and spacing (their approvals would count as two people's): `plangate "
                f"reviewers remove {shlex.quote(same)}` first to rename them, or give this "
                "reviewer another name"
            )
        token = new_token()
        _write(path, [*reviewers, Reviewer(name, frozenset(wanted), hash_token(token))])
    return token


def set_roles(path: Path, name: str, roles: Iterable[str]) -> frozenset[str]:
    """Give a reviewer exactly `roles`, keeping their token; return the roles they had.

    A role taken away counts no more from the gate's next check: an approval they gave under
    it is dropped, not signed.
    """
    wanted = frozenset(_checked_roles(roles))
    with _editing(path):
        reviewers = read_file(path)
        _named(path, reviewers, name)
        before = next(r.roles for r in reviewers if r.name == name)
        _write(path, [replace(r, roles=wanted) if r.name == name else r for r in reviewers])
    return before


def remove_reviewer(path: Path, name: str) -> None:
    """Remove a reviewer from the file; their token and web sessions stop working."""
    with _editing(path):
        reviewers = read_file(path, repairing=True)
        _named(path, reviewers, name)
        _write(path, [r for r in reviewers if r.name != name])


def _named(path: Path, reviewers: Sequence[Reviewer], name: str) -> None:
    """Refuse a name the file does not hold, suggesting one it holds told apart by case alone."""
    if any(r.name == name for r in reviewers):
        return
    near = [r.name for r in reviewers if person_key(r.name) == person_key(name)]
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"no reviewer {name!r} in {path}{hint}; `plangate reviewers list` names them")


def _checked_roles(roles: Iterable[str]) -> list[str]:
    wanted = sorted(set(roles))
    for role in wanted:
        if not re.fullmatch(ROLE_PATTERN, role):
            raise ConfigError(
                f"{role!r} is not a role: letters, digits and _.- , up to 64 characters"
            )
    return wanted


@contextmanager
def _editing(path: Path) -> Iterator[None]:
    """Hold the file's edit lock: two `add`s at once (a provisioning script) must both land.

    The lock is a file of its own beside it: the reviewers file is replaced whole on each
    write, so a lock on it would be on a file no longer there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield  # closing the file lets the lock go


def _write(path: Path, reviewers: Sequence[Reviewer]) -> None:
    """Replace the file atomically, readable by its owner only (mode 0600)."""
    body = {
        "reviewers": [
            {"name": r.name, "token_sha256": r.token_sha256, "roles": sorted(r.roles)}
            for r in reviewers
        ]
    }
    text = _HEADER + yaml.safe_dump(body, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file 0600; os.replace swaps it in whole, so a reader never sees half.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
