"""The planner stage: goal in, validated plan (or a clear failure) out. No tools, no effects."""
