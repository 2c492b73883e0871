"""The gate's policy, read again from its file when an operator changes it.

An emergency deny rule must not wait for a restart (it did, and nothing said so). The file is
looked at, at most once a second, when a plan is decided; a changed file that loads (every rule
compiling, every check at load passing) replaces the policy from the next decision on, and
the gate logs the new version. One that does not is logged as an error and the gate goes on
deciding with the version it had: a half-saved or mistyped file never opens the gate wider or
stops it. Each decision records the version it was made under.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from approval_gate.policy import Policy, load_policy
from plangate.config import Settings
from plangate.errors import ConfigError, PolicyError
from plangate.file_watch import FileWatch

log = logging.getLogger(__name__)
LOOK_EVERY_SECONDS = 1.0


class ReloadingPolicy:
    """Hands out the current policy; with a file, the file's newest version that loads."""

    def __init__(self, policy: Policy, path: Path | None = None) -> None:
        self._policy = policy
        self._watch = FileWatch(path) if path is not None else None
        self._looked = time.monotonic()
        self._lock = threading.Lock()

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
            return self._policy

    def _reload(self, path: Path) -> None:
        try:
            policy = Policy.load(path)
        except (PolicyError, ConfigError, OSError) as exc:
            log.error(
                "the policy file %s changed but cannot be used (%s); still deciding with "
                "version %s: fix the file",
                path,
                exc,
                self._policy.version,
            )
            return
        if policy.version != self._policy.version:
            log.info(
                "policy reloaded from %s: version %s, %d rules (was %s)",
                path,
                policy.version,
                len(policy.rules),
                self._policy.version,
            )
        self._policy = policy
