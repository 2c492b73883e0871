"""The message bus: a small interface with kombu behind it (memory, Redis, RabbitMQ)."""

from plangate.bus.bus import Bus
from plangate.bus.consumer import Handler, StageConsumer
from plangate.bus.envelope import Delivery, Envelope
from plangate.bus.observer import Observer
from plangate.bus.topology import STAGES, Stage, Topology

__all__ = [
    "STAGES",
    "Bus",
    "Delivery",
    "Envelope",
    "Handler",
    "Observer",
    "Stage",
    "StageConsumer",
    "Topology",
]
