"""Every error the server returns, as an HTTP status and an OpenAI-style body:
`{"error": {"message", "type", "param", "code"}}`.

Request handling raises `ApiError`; the app's exception handlers (app.py) turn it, pydantic's
validation errors, Starlette's HTTP errors, `SfedgeError` (bad input found by the runtime: 400) and
anything unexpected (500, the server stays up) into that body.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         429: "rate_limit_error", 500: "server_error", 503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    """An error for the client: status, one-line message, the request field at fault, a short code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error" if status < 500
                                                             else "server_error"),
                      "param": param, "code": code}}


def from_runtime(message: str) -> ApiError:
    """A `SfedgeError` from the pipeline (bad video, a prompt beyond the context ...): 400."""
    if "context holds" in message:
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if message.startswith(VIDEO_ERRORS) or " frames exceed the engines' max_frames" in message:
        return ApiError(400, message, param="messages", code="invalid_video")
    return ApiError(400, message, code="invalid_request")


# how runtime/video.py's and pipeline.py's messages about an unusable video begin
VIDEO_ERRORS = ("cannot decode", "cannot read", "cannot seek", "not a readable video", "no video", "video not found",
                "no image files", "no frames", "the video")


def from_validation(errors: Sequence[dict]) -> ApiError:
    """pydantic's errors (malformed JSON, missing or wrong-typed fields, values out of range): 400 naming
    the first field at fault, e.g. `messages.0.content`."""
    if not errors:
        return ApiError(400, "invalid request body")
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}",
                        code="invalid_json")
    # a union (content: str | list of parts) reports one error per member: take the deepest, and when
    # members fail at the same place, say all they would have accepted
    deepest = max(len(e["loc"]) for e in errors)
    chosen = [e for e in errors if len(e["loc"]) == deepest]
    loc = _field(chosen[0]["loc"])
    msgs = list(dict.fromkeys(e["msg"] for e in chosen if _field(e["loc"]) == loc))
    where = f"'{loc}': " if loc else "the request body: "
    msg = " or ".join([msgs[0], *(m[0].lower() + m[1:] for m in msgs[1:])])
    return ApiError(400, where + msg, param=loc or None, code="invalid_value" if loc else "invalid_request")


def _field(loc) -> str:
    """pydantic's location without its union-member names (`str`, `list[...]`, `function-after[...]`)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p))]
    # a tagged union repeats the member's tag: content.0.video_url.video_url.url -> content.0.video_url.url
    return ".".join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1])
