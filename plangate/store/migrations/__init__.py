"""Alembic migrations of the store's schema (`plangate db upgrade`)."""
