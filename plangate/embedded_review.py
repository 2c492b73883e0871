"""The embedded pipeline's human review: its held plans, and a reviewer's decisions on them.

A part of `plangate.embedded.Pipeline` (its base class): what a test or a library user does
as a reviewer would, on the pipeline's own store and bus.
"""

from __future__ import annotations

import threading

from approval_gate.approvers import RecordedApprovers
from approval_gate.review import Review
from plangate.bus import Bus
from plangate.config import Settings
from plangate.errors import ConfigError
from plangate.relay import deliver
from plangate.stages import build_review
from plangate.store import Store
from plangate.tools import ToolRegistry


class PipelineReview:
    """Decides held plans as a reviewer: approve, reject or edit; `review` lists them."""

    # Set by the pipeline.
    settings: Settings
    store: Store
    bus: Bus
    _registry: ToolRegistry | None
    _review: Review | None
    _stop: threading.Event

    @property
    def review(self) -> Review:
        """The human review service of this pipeline."""
        if self._review is None:
            # Counting approvals as this pipeline's gate does: as recorded in this process.
            review = build_review(self.settings, self.store, RecordedApprovers())
            self._review = (
                review if self._registry is None else review.with_catalog(self._registry.catalog())
            )
        return self._review

    def _refuse_if_stopped(self) -> None:
        if self._stop.is_set():
            raise ConfigError(
                "this Pipeline is stopped: nothing would carry out a goal or a decision given "
                "it; make another (or use it in a with block)"
            )

    def approve(
        self,
        plan_id: str,
        reviewer: str,
        expected_hash: str | None = None,
        roles: frozenset[str] = frozenset(),
    ) -> bool:
        """Approve a held plan as `reviewer`; return whether that released it to the executor.

        False: the approval was counted, and the hold waits for other reviewers' (four eyes).
        """
        self._refuse_if_stopped()
        envelopes = self.review.approve(plan_id, reviewer, expected_hash=expected_hash, roles=roles)
        deliver(self.store, self.bus, envelopes)
        return bool(envelopes)

    def reject(
        self, plan_id: str, reviewer: str, comment: str, roles: frozenset[str] = frozenset()
    ) -> None:
        """Reject a held plan as `reviewer`, with a comment."""
        self._refuse_if_stopped()
        deliver(self.store, self.bus, self.review.reject(plan_id, reviewer, comment, roles=roles))

    def edit(
        self,
        plan_id: str,
        reviewer: str,
        steps: list[dict[str, object]],
        *,
        summary: str | None = None,
        expected_hash: str | None = None,
        roles: frozenset[str] = frozenset(),
        comment: str = "",
    ) -> None:
        """Replace a held plan by `reviewer`'s edit: a new revision the gate decides again."""
        self._refuse_if_stopped()
        envelopes = self.review.edit(
            plan_id,
            reviewer,
            steps,
            summary=summary,
            expected_hash=expected_hash,
            roles=roles,
            comment=comment,
        )
        deliver(self.store, self.bus, envelopes)
