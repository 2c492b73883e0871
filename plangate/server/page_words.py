"""What the review pages say to a reviewer: notices of what they did, and why a form was refused.

In one place, so that the pages and the login say the same things (and tests name them).
"""

from __future__ import annotations

# What the reviewer did; what came of it is the plan's state below, read from the store.
NOTICES = {
    "approved": "Your approval is recorded.",
    "rejected": "Your rejection is recorded.",
    "edited": "Your edit is recorded as this new revision, which the policy decides again.",
    "settled": "What you found is recorded.",
}
EXPIRED_FORM = "The form expired; reload and try again."
SESSION_ENDED = "Your session had ended, so what you sent was not recorded: log in and do it again."
REVIEWER_GONE = (
    "What you sent was not recorded: your token no longer names a reviewer (removed from the "
    "reviewers file, or given a new token). Ask whoever runs plangate; log in with a token "
    "they give you."
)
OTHER_SITE = "A login sent from another site is refused: log in from this page."
FORM_FROM_OTHER_SITE = "A form sent from another site is refused: use the forms of this page."
MAX_REFUSAL_SHOWN = 1000  # characters of a refusal carried to the page in its link
NO_HASH = "The form does not say which revision you reviewed; reload the plan and decide again."
