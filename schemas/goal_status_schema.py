"""A goal's state as one named schema (`GoalStatus`) of a JSON Schema or OpenAPI document.

Every field holding a goal's state refers to it, so a client generated from the document gets
one enum of the state machine's states (`goal_states.GoalStatus`), not a string or one per field.
"""

from __future__ import annotations

from typing_extensions import TypeAliasType

from schemas import goal_states

GoalStatus = TypeAliasType("GoalStatus", goal_states.GoalStatus)
