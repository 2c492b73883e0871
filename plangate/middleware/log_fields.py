"""Every log line written while a message is handled names its goal and message."""

from __future__ import annotations

from contextlib import AbstractContextManager

from typing_extensions import override

from plangate import logs
from plangate.bus.envelope import Delivery
from plangate.bus.middleware import Middleware
from schemas import Message


class LogFields(Middleware):
    """Bind `goal_id` and `message_id` to the handler's log lines (`plangate.logs`)."""

    @override
    def handling(self, message: Message, delivery: Delivery) -> AbstractContextManager[None]:
        return logs.bound(goal_id=message.goal_id, message_id=message.message_id)
