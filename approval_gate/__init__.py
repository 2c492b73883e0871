"""The gate: decides each proposed plan by policy, holds the rest for a person, signs approvals."""
