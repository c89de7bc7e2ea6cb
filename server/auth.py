"""API key check, as a FastAPI dependency (constant-time compare)."""
from __future__ import annotations

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
    expected = request.app.state.service.settings.api_key
    if expected is None:
        return
    given = header_key if header_key is not None else (bearer.credentials if bearer is not None else None)
    if given is None:
        raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
