"""Baselines trained from scratch, to measure the frozen-backbone recipe against (issue 12)."""
