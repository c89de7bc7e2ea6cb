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


class GoalBroken(Conflict):
    """A stored goal lost its image (and has no usable latent for this model): delete and re-upload it."""
    code = "goal_broken"


class StorageFull(ServiceError):
    status, code = 507, "storage_full"


class Busy(ServiceError):
    """Too much of one kind of work at once; retry after `retry_after_s`."""
    status, code = 503, "busy"
    retry_after_s = 1


class StorageUnhealthy(ServiceError):
    status, code = 503, "storage_unhealthy"


class StorageUnusable(Exception):
    """The database cannot be opened or read at start; the message names the file and what to do."""

    @classmethod
    def for_database(cls, data_dir, problem: str) -> "StorageUnusable":
        from .storage import DB_NAME  # storage imports this module

        return cls(f"the database {data_dir / DB_NAME} is unusable ({problem}): restore it from a backup, or move "
                   "it aside to start with an empty one (its goals and sessions are then lost)")


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"
