"""API key check, as FastAPI dependencies (constant-time compare): one for the API, one for its docs."""
from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

API_KEY_HEADER = "X-API-Key"
_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="the service's API key (JEPA_API_KEY); not needed when none is set")
# Accepted too because Prometheus scrape configs can send a bearer token but not arbitrary headers.
_bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


def require_api_key(
    request: Request,
    header_key: str | None = Security(_api_key_header),
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> None:
    given = header_key if header_key is not None else (bearer.credentials if bearer is not None else None)
    _check(request, given, challenge="Bearer")


def require_docs_key(request: Request) -> None:
    """/docs, /redoc and /openapi.json when a key is set: the header or bearer forms, or HTTP Basic
    with the key as the password, so that a browser asks for it once and sends it with the page's
    own fetch of /openapi.json."""
    _check(request, _key_from_headers(request), challenge='Basic realm="jepa-planner API docs"')


def _check(request: Request, given: str | None, challenge: str) -> None:
    expected = request.app.state.service.settings.api_key
    if expected is None:
        return
    if given is None:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": challenge})
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": challenge})


def _key_from_headers(request: Request) -> str | None:
    if API_KEY_HEADER in request.headers:
        return request.headers[API_KEY_HEADER]
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    if scheme.lower() == "basic" and credentials:
        try:
            return base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""  # malformed: refused as a wrong key
    return None
