"""Prefect flows: thin wiring over pipeline/ and sam2rad/ (retries, concurrency, caching, artifacts)."""
