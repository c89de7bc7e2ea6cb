"""Reading uploads from a request: a goal as multipart (`image` field) or as a raw image body."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request

from .errors import InvalidInput, UnsupportedMediaType

RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/octet-stream")

GOAL_UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG or WebP"},
                        "name": {"type": "string", "maxLength": 200},
                        "metadata": {"type": "string", "description": "a JSON object stored with the goal"},
                    },
                }
            },
            **{content_type: {"schema": {"type": "string", "format": "binary"}} for content_type in RAW_IMAGE_TYPES},
        },
    }
}


@dataclass(frozen=True)
class GoalUpload:
    data: bytes
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


async def read_goal_upload(request: Request) -> GoalUpload:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        async with request.form(max_files=1, max_fields=8) as form:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise InvalidInput("multipart upload needs a file field named 'image'", code="missing_image")
            name = form.get("name")
            return GoalUpload(data=await image.read(), name=name if isinstance(name, str) else None,
                              metadata=_parse_metadata(form.get("metadata")))
    if content_type in RAW_IMAGE_TYPES:
        return GoalUpload(data=await request.body())
    raise UnsupportedMediaType(
        "send the goal as multipart/form-data with an 'image' file field, or as a raw body with "
        f"Content-Type one of {', '.join(RAW_IMAGE_TYPES)}"
    )


def _parse_metadata(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        raise InvalidInput("metadata must be a text field holding a JSON object", code="invalid_metadata")
    try:
        parsed = json.loads(value, parse_constant=_reject_non_finite, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise InvalidInput("metadata must be a JSON object", code="invalid_metadata") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("metadata must be a JSON object", code="invalid_metadata")
    return parsed


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to infinity
        raise ValueError(f"{text} is out of range")
    return value


def _reject_non_finite(constant: str) -> None:
    # NaN / Infinity are not JSON; accepting them would make the goal unrenderable as JSON later.
    raise ValueError(f"{constant} is not valid JSON")
