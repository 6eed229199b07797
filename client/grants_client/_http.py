"""What the webhook and the status API share: the HTTP client, and an answer that is not the one asked for as the
client's error."""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from grants_client._errors import (
    ConfigError,
    GrantsError,
    InvalidRequest,
    NotAuthorized,
    NotFound,
    Problem,
    RequestIdConflict,
    Unavailable,
    one_line,
)

__all__ = ["LOOPBACK_HOSTS", "base_of", "client", "is_loopback", "json_of", "refusal", "unreachable"]

LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1")


def client(*, base_url: str, timeout: float) -> httpx.Client:
    """An HTTP client for `base_url`: no proxy from the environment for a loopback address (serve-local)."""
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=not is_loopback(base_url))


def is_loopback(url: str) -> bool:
    """True for a URL on this machine with an explicit port: a serve-local (or ``func start``)."""
    parts = urlsplit(url)
    return parts.hostname in LOOPBACK_HOSTS and parts.port is not None


def base_of(url: str) -> str:
    """``scheme://host:port`` of `url`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def unreachable(url: str, error: Exception) -> Unavailable:
    """The error for `url` giving no answer: for a loopback address, the command that starts serve-local on its port;
    otherwise the kind of `error` (``ConnectError``, ``ReadTimeout``…)."""
    base = base_of(url)
    if is_loopback(url):
        port = urlsplit(url).port
        return Unavailable(
            f"no serve-local answers on {base}: start it in another terminal with "
            f"`.venv/bin/grants serve-local --port {port}`"
        )
    return Unavailable(f"{base} could not be reached: {type(error).__name__}")


def refusal(response: httpx.Response, *, what: str) -> GrantsError:
    """The error for an answer from `what` (``the webhook``, ``the status API``) other than the one asked for: a
    problem detail's words where it has them."""
    detail, problems = _problem(response)
    status = response.status_code
    said = f"{what} answered {status}: {detail}"
    if status == 400 or status in (413, 415):
        return InvalidRequest(f"{what} refused the request: {detail}", problems=problems)
    if status in (401, 403):
        return NotAuthorized(said)
    if status == 404 and response.headers.get("content-type", "").startswith("application/problem+json"):
        return NotFound(detail)
    if status == 404:
        return ConfigError(f"nothing at {response.request.url} answers {what}'s requests (404): check the URL")
    if status == 409 and "request-id-conflict" in _type(response):
        return RequestIdConflict(detail)
    if status == 429 or status >= 500:
        return Unavailable(said, retry_after=_retry_after(response))
    return GrantsError(said)


def _problem(response: httpx.Response) -> tuple[str, list[Problem]]:
    """An answer's problem detail and invalid fields (RFC 9457), or the start of its text."""
    document = json_of(response)
    if not isinstance(document, dict):
        return one_line(response.text or response.reason_phrase or "(no text)"), []
    detail = document.get("detail") or document.get("title") or document.get("error") or response.reason_phrase
    problems = [
        Problem(str(error.get("pointer", "")), one_line(str(error.get("detail", ""))))
        for error in document.get("errors") or []
        if isinstance(error, dict)
    ]
    text = one_line(str(detail))
    if problems:
        text += ": " + "; ".join(f"{p.pointer or '(body)'} {p.detail}" for p in problems)
    return text, problems


def _type(response: httpx.Response) -> str:
    document = json_of(response)
    return str(document.get("type", "")) if isinstance(document, dict) else ""


def json_of(response: httpx.Response) -> Any:
    """The JSON an answer holds, or None when it holds none."""
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None
