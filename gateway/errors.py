"""Every error keygate itself produces, mapped to the JSON contract in one place.

Hierarchy (status, default code)::

    KeygateError                      500 internal_error
    ├── BadRequest                    400 bad_request
    │   ├── BadFraming                400 bad_request (closes the connection)
    │   ├── BadPath                   400 bad_path
    │   └── AmbiguousApiKey           400 ambiguous_api_key
    ├── Unauthorized                  401 (missing_api_key | invalid_api_key |
    │                                      key_disabled | key_expired)
    ├── Forbidden                     403 forbidden
    │   ├── IpNotAllowed              403 ip_not_allowed
    │   └── UntrustedProxy            403 untrusted_proxy (forward-auth)
    ├── NotFound                      404 not_found (no_route at the proxy)
    ├── MethodNotAllowed              405 method_not_allowed
    ├── Conflict                      409 (name_taken | key_limit_reached |
    │                                      group_in_use | already_exists | ...)
    ├── TooLarge                      413 too_large
    ├── UnsupportedMediaType          415 unsupported_media_type
    ├── Invalid                       422 invalid, with per-field ``details``
    ├── TooManyRequests               429 (rate_limited | quota_exceeded),
    │                                      with Retry-After and violated_policies
    ├── HeadersTooLarge               431 headers_too_large
    ├── UpstreamUnavailable           502 upstream_unavailable
    ├── StoreUnavailable / Busy       503 store_unavailable / upstream_busy
    │   └── StoreTooNew               503 store_too_new (refused at open)
    ├── RateLimitUnavailable          503 ratelimit_unavailable
    ├── UpstreamTimeout               504 upstream_timeout
    └── InsufficientStorage           507 insufficient_storage (the store's disk is full)

Messages are fixed sentences written here or by the caller; they never carry a
presented credential (docs/reference.md#token-format: a token is never put in
an error message).
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class KeygateError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal error."
    # Whether the connection closes after this answer whatever the request
    # wished: where the next request would start is in doubt.
    closes_connection: ClassVar[bool] = False

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code or self.default_code
        self.message = message or self.default_message
        self.details = details
        self.headers = headers
        super().__init__(self.message)

    def body(self) -> bytes:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return orjson.dumps({"error": error})


class BadRequest(KeygateError):
    status = 400
    default_code = "bad_request"
    default_message = "The request is malformed."


class BadPath(BadRequest):
    default_code = "bad_path"
    default_message = "The request path is not allowed."


class BadFraming(BadRequest):
    """A request whose framing keygate will not guess at: the connection closes
    after the answer, since where the next request starts is in doubt too."""

    default_message = "The request is not valid HTTP."
    closes_connection = True


class AmbiguousApiKey(BadRequest):
    default_code = "ambiguous_api_key"
    default_message = "The request carries more than one API key."


class Unauthorized(KeygateError):
    status = 401
    default_code = "invalid_api_key"
    default_message = "The API key is not valid."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        # RFC 9110 §11.6.1: a 401 carries a challenge.
        super().__init__(
            message, code=code, headers={"WWW-Authenticate": 'Bearer realm="keygate"'}
        )


def missing_api_key() -> Unauthorized:
    return Unauthorized("An API key is required.", code="missing_api_key")


def key_disabled() -> Unauthorized:
    return Unauthorized("The API key is disabled.", code="key_disabled")


def key_expired() -> Unauthorized:
    return Unauthorized("The API key has expired.", code="key_expired")


class Forbidden(KeygateError):
    status = 403
    default_code = "forbidden"
    default_message = "The API key may not do this."


class IpNotAllowed(Forbidden):
    default_code = "ip_not_allowed"
    default_message = "The API key may not be used from this address."


class UntrustedProxy(Forbidden):
    default_code = "untrusted_proxy"
    default_message = "Only a trusted proxy may ask about another request."


class NotFound(KeygateError):
    status = 404
    default_code = "not_found"
    default_message = "Not found."


class MethodNotAllowed(KeygateError):
    status = 405
    default_code = "method_not_allowed"
    default_message = "The method is not allowed here."


class Conflict(KeygateError):
    status = 409
    default_code = "conflict"
    default_message = "The request conflicts with the current state."


class TooLarge(KeygateError):
    status = 413
    default_code = "too_large"
    default_message = "The request body is too large."


class UnsupportedMediaType(KeygateError):
    status = 415
    default_code = "unsupported_media_type"
    default_message = "The request body's encoding is not supported here."


class Invalid(KeygateError):
    status = 422
    default_code = "invalid"
    default_message = "The request is not valid."

    def __init__(self, details: dict[str, str], message: str | None = None) -> None:
        super().__init__(message or "The request is not valid.", details=details)


class TooManyRequests(KeygateError):
    """429 (RFC 6585 §4): a rate limit (``rate_limited``) or the quota
    (``quota_exceeded``); ``Retry-After`` in whole seconds, rounded up."""

    status = 429
    default_code = "rate_limited"
    default_message = "Too many requests for this API key; retry later."

    def __init__(self, code: str, violated: list[str], retry_after: int) -> None:
        message = (
            "The API key's quota is used up; retry when it resets."
            if code == "quota_exceeded"
            else self.default_message
        )
        super().__init__(
            message,
            code=code,
            details={"violated_policies": violated},
            headers={"Retry-After": str(retry_after)},
        )


class HeadersTooLarge(KeygateError):
    status = 431
    default_code = "headers_too_large"
    default_message = "The request headers are too large."


class UpstreamUnavailable(KeygateError):
    status = 502
    default_code = "upstream_unavailable"
    default_message = "The upstream service is unavailable."


class ServiceUnavailable(KeygateError):
    status = 503
    default_code = "unavailable"
    default_message = "The service is unavailable."


class StoreUnavailable(ServiceUnavailable):
    default_code = "store_unavailable"
    default_message = "The key store is unavailable."


class RateLimitUnavailable(ServiceUnavailable):
    default_code = "ratelimit_unavailable"
    default_message = "The rate-limit store is unavailable."


class StoreTooNew(StoreUnavailable):
    """The store's schema is newer than this keygate knows: refused at open,
    before anything reads or writes it (an older keygate could misread it)."""

    default_code = "store_too_new"

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"store schema {found} is newer than this keygate ({known}); "
            "run the keygate version that wrote it, or a newer one"
        )
        self.found = found
        self.known = known


class UpstreamBusy(ServiceUnavailable):
    default_code = "upstream_busy"
    default_message = "The upstream has too many requests in flight."


class UpstreamTimeout(KeygateError):
    status = 504
    default_code = "upstream_timeout"
    default_message = "The upstream service did not answer in time."


class InsufficientStorage(KeygateError):
    """A write the store could not make for lack of space (RFC 4918 §11.5): SQLite's
    ``SQLITE_FULL``, PostgreSQL's ``disk_full``. Nothing was written; reads, and
    so the proxy, keep working, and the same write succeeds once space is freed."""

    status = 507
    default_code = "insufficient_storage"
    default_message = "The key store has no space left to record this change."
