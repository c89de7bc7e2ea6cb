"""Errors the service raises on purpose. Each carries its HTTP status and a stable machine code;
the app turns them into `{"error": {"code", "message"}}` and the bridge into a hold with a reason."""
from __future__ import annotations


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class StaleObservation(Conflict):
    code = "stale_observation"


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class ModelUnavailable(ServiceError):
    status, code = 503, "model_unavailable"


class ActTimeout(ServiceError):
    status, code = 504, "act_timeout"


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"
