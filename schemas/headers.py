"""The names of the message headers plangate sets, as the AsyncAPI document lists them.

Here, with the message contract, and not in the bus: a reader of the outbox (`plangate
status`) finds a goal's messages by them without loading any broker's code.
"""

from __future__ import annotations

ATTEMPT_HEADER = "x-plangate-attempt"
GOAL_HEADER = "x-plangate-goal-id"
MESSAGE_ID_HEADER = "x-plangate-message-id"
# The message's type, kept on its retry copies (whose routing key is the stage's retry key).
TYPE_HEADER = "x-plangate-type"
# When this copy was handed to the broker (every publish: first send, retry, relay, resend).
# A queue hands messages out in the order they were published, so the reconciler compares a
# stage's progress in these times, not in when the message was first made.
SENT_AT_HEADER = "x-plangate-sent-at"
