"""The gate's policy, read again from its file when an operator changes it.

An emergency deny rule must not wait for a restart (it did, and nothing said so). The file is
looked at, at most once a second, when a plan is decided and at each sweep of a gate worker;
a changed file that loads (every rule compiling, every check at load passing) replaces the
policy from the next decision on, and the gate logs the new version. One that does not is
logged as an error and the gate goes on deciding with the version it had: a half-saved or
mistyped file never opens the gate wider or stops it. Each decision records the version it
was made under.

While the file cannot be used, `plangate_policy_file_unusable` is 1 and the error is said
again every few minutes: said once, an emergency rule that did not compile left the older,
wider policy deciding unnoticed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from approval_gate.policy import Policy, load_policy
from plangate import metrics
from plangate.config import Settings
from plangate.errors import ConfigError, PolicyError
from plangate.file_watch import FileWatch

log = logging.getLogger(__name__)
LOOK_EVERY_SECONDS = 1.0
SAY_AGAIN_EVERY_SECONDS = 300.0  # while the file cannot be used


class ReloadingPolicy:
    """Hands out the current policy; with a file, the file's newest version that loads."""

    def __init__(self, policy: Policy, path: Path | None = None) -> None:
        self._policy = policy
        self._watch = FileWatch(path) if path is not None else None
        self._looked = time.monotonic()
        self._lock = threading.Lock()
        self._unusable: str | None = None  # why the file cannot be used, while it cannot
        self._said_at = 0.0
        metrics.policy_in_force(policy.version, file_unusable=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReloadingPolicy:
        """Load the configured policy, watching its file from before the first read."""
        path = settings.policy_file
        watch = FileWatch(path) if path is not None else None  # an edit meanwhile: seen next
        reloading = cls(load_policy(settings))
        reloading._watch = watch
        return reloading

    def current(self) -> Policy:
        """Return the policy to decide with now."""
        watch = self._watch
        if watch is None or time.monotonic() - self._looked < LOOK_EVERY_SECONDS:
            return self._policy
        with self._lock:
            self._looked = time.monotonic()
            if watch.changed():
                self._reload(watch.path)
            elif self._unusable is not None and self._due_to_say_again():
                self._say_unusable(watch.path, "still cannot")
            return self._policy

    def _reload(self, path: Path) -> None:
        try:
            policy = Policy.load(path)
        except (PolicyError, ConfigError, OSError) as exc:
            self._unusable = str(exc)
            self._say_unusable(path, "changed but cannot")
            metrics.policy_in_force(self._policy.version, file_unusable=True)
            return
        if policy.version != self._policy.version:
            log.info(
                "policy reloaded from %s: version %s, %d rules (was %s)",
                path,
                policy.version,
                len(policy.rules),
                self._policy.version,
            )
        elif self._unusable is not None:  # put back as it was: nothing else would say so
            log.info(
                "the policy file %s can be used again: version %s, as before", path, policy.version
            )
        self._policy, self._unusable = policy, None
        metrics.policy_in_force(policy.version, file_unusable=False)

    def _due_to_say_again(self) -> bool:
        return time.monotonic() - self._said_at >= SAY_AGAIN_EVERY_SECONDS

    def _say_unusable(self, path: Path, what: str) -> None:
        self._said_at = time.monotonic()
        log.error(
            "the policy file %s %s be used (%s); still deciding with version %s: fix the file",
            path,
            what,
            self._unusable,
            self._policy.version,
        )
