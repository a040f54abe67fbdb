"""
auth: the web listener's API tokens: the generated token file and Bearer checks.

JOB
    Reads ``Authorization: Bearer <token>`` headers and checks their token
    against ``[web] api_tokens`` (:class:`TokenAuth`); with no tokens
    configured, :func:`ensure_api_token` generates one once into
    ``state_dir/api-token``. The API, the status page (its login and its
    sessions) and the web listener's admission policy
    (:class:`mailrelay.web.server.Gate`) all check tokens here.

SECURITY
    Tokens are compared in constant time, every configured token each time (the
    time does not say which one matched). The generated token is 32 random bytes
    (base64url), written with mode 0600, never logged (its path is). A missing or
    wrong token gets 401 with ``WWW-Authenticate: Bearer`` (``error="invalid_token"``
    when one was given).

STANDARDS
    RFC 6750 (Bearer tokens), RFC 9110 (401, WWW-Authenticate).

DIAGNOSTICS
    A token file that is not usable (shorter than 16 characters, or holding
    whitespace) raises ValueError naming it: delete it to generate a new one.

CONFIGURATION
    ``[web] api_tokens``; file ``state_dir/api-token``.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any, Iterable

from twisted.web.http_headers import Headers

from mailrelay.web.jsonhttp import ApiError

#: The file holding the generated API token (when ``[web] api_tokens`` is empty).
API_TOKEN_FILE = "api-token"


def ensure_api_token(state_dir: Path) -> tuple[str, Path]:
    """
    The generated API token and its file: written once to ``state_dir/api-token``
    (mode 0600, the token alone on one line) and read back on later starts.
    """
    path = state_dir / API_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ValueError(f"{path}: not a usable API token (delete the file to generate a new one)")
        return token, path
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, path


def bearer_token(request: Any) -> str | None:
    """The token of a single ``Authorization: Bearer <token>`` header, else None."""
    return bearer_token_of(request.requestHeaders)


def bearer_token_of(headers: Headers) -> str | None:
    """The token of a single ``Authorization: Bearer <token>`` header in ``headers``, else None."""
    values = headers.getRawHeaders(b"authorization") or []
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.decode("utf-8", "replace")


class TokenAuth:
    """Checks Bearer tokens against the configured (or generated) ones, in constant time."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def check_token(self, token: str) -> bool:
        candidate = token.encode("utf-8", "replace")
        ok = False
        for known in self._tokens:  # every token compared: the time does not say which matched
            ok |= hmac.compare_digest(candidate, known)
        return ok

    def check_header(self, request: Any) -> bool:
        token = bearer_token(request)
        return token is not None and self.check_token(token)


def unauthorized(token_given: bool) -> ApiError:
    challenge = b'Bearer realm="mailrelay"'
    if token_given:
        challenge += b', error="invalid_token"'
    return ApiError(401, "a valid Authorization: Bearer <token> header is required",
                    headers={b"www-authenticate": challenge})
