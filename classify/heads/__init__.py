"""Heads: the registry (one entry a head) and the estimators it names."""
