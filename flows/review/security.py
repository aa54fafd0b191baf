"""The review station's security rules, in one place.

- It listens on loopback unless told otherwise; any other address needs a token (refused without one).
- With a token, every request carries it: `Authorization: Bearer <token>`, or the HttpOnly SameSite
  cookie set when the reader opens `/?token=<token>` once.
- State-changing requests are POST with a JSON body and the page's per-process CSRF header
  (`X-Review-CSRF`), which another site's page can neither read nor send without a CORS preflight
  that this app never answers.
- Bodies are bounded (`MAX_BODY_BYTES`), Host headers are checked (no DNS rebinding onto loopback).
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

CSRF_HEADER = "x-review-csrf"
TOKEN_COOKIE = "sam2rad_review_token"
MAX_BODY_BYTES = 16 * 1024
TOKEN_ENV = "SAM2RAD_REVIEW_TOKEN"


class UnsafeBinding(ValueError):
    """The station was asked to listen where it must not without a token."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise UnsafeBinding(f"refusing to listen on {host} without a token: other machines could reach patient "
                            f"images. Pass --token (or set {TOKEN_ENV}), or listen on 127.0.0.1")
    if token is not None and len(token) < 16:
        raise UnsafeBinding("the token must be at least 16 characters")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class ReviewGuard:
    """ASGI middleware enforcing the rules above before any endpoint runs."""

    def __init__(self, app: ASGIApp, token: str | None, csrf_token: str, allowed_hosts: tuple[str, ...]) -> None:
        self.app, self.token, self.csrf_token = app, token, csrf_token
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    def _authorised(self, request: Request) -> bool:
        if not self.token:
            return True
        offered = request.cookies.get(TOKEN_COOKIE) or ""
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            offered = bearer[7:].strip()
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def _refusal(self, request: Request) -> Response | None:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if "*" not in self.allowed_hosts and host not in self.allowed_hosts:
            return _error(400, "unexpected Host header")
        if self.token and request.url.path == "/" and request.query_params.get("token"):
            if not hmac.compare_digest(request.query_params["token"].encode(), self.token.encode()):
                return _error(401, "wrong token")
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        if not self._authorised(request):
            return _error(401, "a token is required: open /?token=<token> or send Authorization: Bearer <token>")
        if request.method not in ("GET", "HEAD", "POST"):
            return _error(405, "only GET and POST")
        if request.method == "POST":
            if not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), self.csrf_token.encode()):
                return _error(403, "missing or wrong X-Review-CSRF header (reload the page)")
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return _error(415, "POST bodies are JSON (Content-Type: application/json)")
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return _error(411, "Content-Length required")
            if int(length) > MAX_BODY_BYTES:
                return _error(413, f"body over {MAX_BODY_BYTES} bytes")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def csrf_meta(token: str) -> str:
    return json.dumps(token)
