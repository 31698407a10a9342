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
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if status_code is not None:
            self.status_code = status_code
        self.detail = detail or {}

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
