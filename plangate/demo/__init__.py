"""The seed example: count open tickets, compare with the SLA, notify on-call once."""
