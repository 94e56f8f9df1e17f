"""Core services every capability builds on: the metadata DB, tenants, keys, errors, pagination."""
