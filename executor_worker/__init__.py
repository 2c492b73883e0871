"""The executor stage: runs exactly the approved plan, each write effect once."""
