"""Errors that become 4xx JSON answers: each names the problem and carries a bounded metric reason."""

from __future__ import annotations

from typing import Any


class OpticError(Exception):
    """A request the service refuses. `reason` is a short, bounded label for the errors metric."""

    status_code = 400
    reason = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        status_code: int | None = None,
        detail: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if status_code is not None:
            self.status_code = status_code
        self.detail = detail or {}
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "reason": self.reason}
        if self.detail:
            body["detail"] = self.detail
        return body


class InvalidImage(OpticError):
    reason = "invalid_image"
    status_code = 422


class ImageTooLarge(OpticError):
    reason = "image_too_large"
    status_code = 413


class UnknownModel(OpticError):
    reason = "unknown_model"
    status_code = 404


class WrongTask(OpticError):
    reason = "wrong_task"
    status_code = 422


class NoImages(OpticError):
    reason = "no_images"
    status_code = 400


class TooManyImages(OpticError):
    reason = "too_many_images"
    status_code = 413


class BodyTooLarge(OpticError):
    reason = "body_too_large"
    status_code = 413


class InvalidArchive(OpticError):
    reason = "invalid_archive"
    status_code = 422


class ArchiveTooLarge(OpticError):
    reason = "archive_too_large"
    status_code = 413


class InvalidDataset(OpticError):
    reason = "invalid_dataset"
    status_code = 422


class InvalidParameter(OpticError):
    reason = "invalid_parameter"
    status_code = 422


class MalformedRequest(OpticError):
    """The body cannot be read as what the route takes: broken multipart framing, a missing boundary."""

    reason = "malformed_request"
    status_code = 400


class UnsupportedMediaType(OpticError):
    reason = "unsupported_media_type"
    status_code = 415


class TooManyParts(OpticError):
    reason = "too_many_parts"
    status_code = 413


class FieldTooLarge(OpticError):
    reason = "field_too_large"
    status_code = 413


class InvalidFilename(OpticError):
    reason = "invalid_filename"
    status_code = 400


class ExpectedFile(OpticError):
    """A text value where a file belongs: it is never taken as a URL to fetch."""

    reason = "expected_file"
    status_code = 422


class ExpectedText(OpticError):
    reason = "expected_text"
    status_code = 422


class Overloaded(OpticError):
    reason = "overloaded"
    status_code = 503


class ShuttingDown(OpticError):
    reason = "shutting_down"
    status_code = 503


class Unauthorized(OpticError):
    reason = "unauthorized"
    status_code = 401


class NotFound(OpticError):
    reason = "not_found"
    status_code = 404


class MethodNotAllowed(OpticError):
    reason = "method_not_allowed"
    status_code = 405


class ControlOff(OpticError):
    """A model load or unload call while model control is off (OPTIC_MODEL_CONTROL)."""

    reason = "model_control_off"
    status_code = 403


class LoadFailed(OpticError):
    """A load call found the model's folder, but no version of it could be loaded."""

    reason = "load_failed"
    status_code = 400


class UnknownJob(OpticError):
    reason = "unknown_job"
    status_code = 404


class JobFinished(OpticError):
    reason = "job_finished"
    status_code = 409


class PathNotAllowed(OpticError):
    reason = "path_not_allowed"
    status_code = 403


class QueueFull(OpticError):
    reason = "evaluation_queue_full"
    status_code = 503
