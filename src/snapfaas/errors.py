"""Domain errors shared by every daemon-side subpackage.

Each error carries the Lambda wire code, HTTP status and message it maps to, so `api/` can
serialize any of them without knowing where they came from. Nothing below `api/` knows HTTP;
the `status` attribute is data, not behaviour.
"""

from __future__ import annotations


class SnapfaasError(Exception):
    """Root of every error the platform raises on purpose."""

    code = "ServiceException"
    status = 500
    error_type = "Service"  # Lambda's body "Type": "User" for caller faults, "Service" otherwise
    message_key = "Message"  # botocore shapes disagree on casing; each leaf picks its own

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extra(self) -> dict[str, object]:
        """Additional body members (e.g. ``Reason`` for throttling)."""
        return {}


class InvalidRequest(SnapfaasError):
    status = 400
    error_type = "User"


class ValidationError(InvalidRequest):
    code = "ValidationException"
    message_key = "message"


class InvalidParameterValue(InvalidRequest):
    code = "InvalidParameterValueException"
    message_key = "message"


class InvalidRequestContent(InvalidRequest):
    code = "InvalidRequestContentException"
    message_key = "message"


class RequestTooLarge(InvalidRequest):
    code = "RequestEntityTooLargeException"
    status = 413
    message_key = "message"


class NotFound(SnapfaasError):
    code = "ResourceNotFoundException"
    status = 404
    error_type = "User"


class Conflict(SnapfaasError):
    code = "ResourceConflictException"
    status = 409
    error_type = "User"
    message_key = "message"


class PreconditionFailed(SnapfaasError):
    code = "PreconditionFailedException"
    status = 412
    error_type = "User"
    message_key = "message"


class Throttled(SnapfaasError):
    code = "TooManyRequestsException"
    status = 429
    error_type = "User"
    message_key = "message"

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def extra(self) -> dict[str, object]:
        return {"Reason": self.reason}


class AuthError(SnapfaasError):
    status = 403
    error_type = "User"


class UnrecognizedClient(AuthError):
    code = "UnrecognizedClientException"
    message_key = "message"


class InvalidSignature(AuthError):
    code = "InvalidSignatureException"
    message_key = "message"


class MissingAuthentication(AuthError):
    code = "MissingAuthenticationTokenException"
    message_key = "message"


class AccessDenied(AuthError):
    """An authenticated caller without permission for the operation (see `snapfaas.policy`)."""

    code = "AccessDeniedException"


class PolicyLengthExceeded(InvalidRequest):
    code = "PolicyLengthExceededException"
    message_key = "message"


class ServiceError(SnapfaasError):
    """Something broke on our side; the message names the failed step."""


class ServiceUnavailable(ServiceError):
    """A shared service the request needs (the cluster's database, another node) cannot be
    reached right now: retryable, so clients (botocore) retry a 503 with backoff."""
    status = 503


class RuntimeUnavailable(SnapfaasError):
    """The interpreter configured for a runtime is missing or broken."""

    code = "InvalidRuntimeException"
    status = 502


class SnapStartError(SnapfaasError):
    """An after-restore hook failed (or the restore itself did)."""

    code = "SnapStartException"
    status = 400
    error_type = "User"


class SnapStartTimeout(SnapfaasError):
    """Restore plus after-restore hooks took longer than Lambda's 10 s."""

    code = "SnapStartTimeoutException"
    status = 408
    error_type = "User"


class SnapStartNotReady(SnapfaasError):
    """The version's snapshot is being (re-)created."""

    code = "SnapStartNotReadyException"
    status = 409
    error_type = "User"
