"""The review station's web layer (FastAPI on uvicorn, plain HTML/JS/canvas): `create_app` over a
pipeline.review.ReviewStation, and the security rules it enforces (security.py)."""
