"""What /docs shows beyond the request schemas: every route's error responses and the upload bodies.

The edit, preflight and voice routes read their bodies themselves (JSON or multipart, within the
upload limit), so their request bodies are described here for OpenAPI; the error examples follow
OpenAI's error JSON as ``api/errors.py`` writes it.
"""

from __future__ import annotations

from api.schema import EditJSONRequest
from synthesis import MAX_BEST_OF

ERRORS = {
    status: {
        "description": text,
        "content": {
            "application/json": {
                "example": {"error": {"message": text, "type": kind, "param": None, "code": code}}
            }
        },
    }
    for status, text, kind, code in (
        (400, "The input cannot be used (the message says why)", "invalid_request_error", "invalid_request"),
        (401, "A valid API key is required", "invalid_request_error", "invalid_api_key"),
        (404, "No voice or output with that id", "invalid_request_error", "not_found"),
        (413, "The upload is over the size limit", "invalid_request_error", "too_large"),
        (429, "The queue is full; try again in a moment", "rate_limit_error", "queue_full"),
        (503, "The models are still loading or a backend is down", "server_error", "loading"),
    )
}
EDIT_BODY = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": EditJSONRequest.model_json_schema(),
                "example": {"output_id": "out-3f2a9c1b7d0e", "task": "emotion", "subtask": "happy"},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "task"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "text": {"type": "string"},
                        "task": {"type": "string", "example": "style"},
                        "subtask": {"type": "string", "example": "whisper"},
                        "new_text": {"type": "string"},
                        "response_format": {"type": "string", "example": "wav"},
                        "seed": {"type": "integer"},
                        "best_of": {"type": "integer", "minimum": 1, "maximum": MAX_BEST_OF},
                    },
                }
            },
        }
    }
}
PREFLIGHT_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "text": {
                            "type": "string",
                            "description": "what the clip says, if typed (compared with the transcript)",
                        },
                    },
                }
            }
        }
    }
}
VOICE_BODY = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string", "example": "Calm narrator"},
                        "text": {"type": "string", "description": "what the clip says (empty: transcribed)"},
                    },
                }
            }
        }
    }
}
