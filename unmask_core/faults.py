"""Storage faults, final or transient. A final fault belongs to the object (no such key or bucket, access
denied, not a file): it is that input's answer. A transient one belongs to the world (the endpoint
unreachable, throttled or timing out, a full disk, an I/O error): it is retried in place, and if it
persists it stops the job, never becoming an input's answer (docs/operations.md).
"""

from __future__ import annotations

import errno
import os
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

from unmask_core.errors import TransientError, UserError

T = TypeVar("T")
S3_SCHEMES = ("s3://", "s3a://")
PATIENCE_ENV = "UNMASK_STORAGE_PATIENCE_S"
DEFAULT_PATIENCE_S = 60.0  # how long a job waits out a storage outage before it stops
_FIRST_DELAY_S, _MAX_DELAY_S = 0.5, 8.0

# The world's faults: retried, and never an input's final answer.
_TRANSIENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EIO,
    errno.EAGAIN,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ENFILE,
    errno.EMFILE,
    errno.ESTALE,
}
_THROTTLED_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "TooManyRequestsException",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "ServiceUnavailable",
    "InternalError",
}
NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_DENIED_CODES = {"AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
# Exception classes (by name, anywhere in their MRO: botocore, urllib3, aiohttp and fsspec each have
# their own) that mean the endpoint could not be reached or did not answer in time.
_UNREACHABLE_CLASSES = {
    "ConnectionError",
    "HTTPClientError",
    "IncompleteReadError",
    "ProtocolError",
    "ClientConnectionError",
    "ClientPayloadError",
    "ServerDisconnectedError",
    "Timeout",
    "TimeoutError",
    "FSTimeoutError",
}
# pyarrow's S3 filesystem reports every fault as an OSError with AWS's error name in its text.
_UNREACHABLE_TEXT = re.compile(
    r"NETWORK_CONNECTION|curlCode|Couldn't connect|Connection refused|SLOW_DOWN|SERVICE_UNAVAILABLE|"
    r"THROTTLING|INTERNAL_FAILURE|REQUEST_TIMEOUT|Timeout was reached|timed out",
    re.IGNORECASE,
)


def s3_error_code(exc: BaseException) -> tuple[str, int]:
    """(AWS error code, HTTP status) of a botocore ClientError; ("", 0) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return str(response.get("Error", {}).get("Code", "")), status


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from (s3fs turns botocore's errors into OSErrors)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    return chain


def classify(uri: str, exc: BaseException, endpoint: str | None) -> UserError | TransientError:
    """What a failed storage call on `uri` (an S3 URI served by `endpoint`, or a local path) means, as
    one line: a TransientError when the world failed, a UserError when the object is the problem."""
    if isinstance(exc, UserError | TransientError):
        return exc
    s3 = uri.startswith(S3_SCHEMES)
    bucket = uri.split("://", 1)[-1].partition("/")[0]
    for cause in _causes(exc):
        code, status = s3_error_code(cause)
        if code in NOT_FOUND_CODES or status == 404:
            if code == "NoSuchBucket" and s3:
                return UserError(f"{uri}: bucket {bucket!r} does not exist")
            return UserError(f"{uri}: no such file or prefix")
        if code in _DENIED_CODES or status == 403:
            return UserError(f"{uri}: access denied")
        if code in _THROTTLED_CODES or status in (429, 500, 502, 503, 504):
            return TransientError(
                f"{uri}: the S3 endpoint {endpoint!r} is unavailable or throttling ({code})"
            )
        if code:
            return UserError(f"{uri}: {code}: {str(cause).splitlines()[0]}")
        if type(cause).__name__ == "NoCredentialsError":
            return UserError(f"{uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    text = str(exc)
    names = {klass.__name__ for cause in _causes(exc) for klass in type(cause).__mro__}
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text:
        if s3 and "bucket" in text.lower():
            return UserError(f"{uri}: bucket {bucket!r} does not exist")
        return UserError(f"{uri}: no such file or prefix")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "ACCESS_DENIED" in text:
        return UserError(f"{uri}: access denied")
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS and not s3:
        return TransientError(f"{uri}: {os.strerror(exc.errno).lower()}")
    if names & _UNREACHABLE_CLASSES or _UNREACHABLE_TEXT.search(text):
        if s3:
            return TransientError(f"{uri}: cannot reach the S3 endpoint {endpoint!r}")
        return TransientError(f"{uri}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")
    if isinstance(exc, OSError) and exc.errno is not None:
        return UserError(f"{uri}: {os.strerror(exc.errno).lower()}")
    return UserError(f"{uri}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")


def patience_s() -> float:
    """How long a storage call keeps retrying a transient fault, in seconds (UNMASK_STORAGE_PATIENCE_S)."""
    try:
        return max(0.0, float(os.environ.get(PATIENCE_ENV, DEFAULT_PATIENCE_S)))
    except ValueError:
        return DEFAULT_PATIENCE_S


def retry(uri: str, action: Callable[[], T], endpoint: str | None) -> T:
    """`action()`, with a transient fault retried in place under exponential backoff for up to
    `patience_s()`; then it is raised as a TransientError naming `uri` and how long it lasted. A
    final fault is raised at once."""
    delay, deadline = _FIRST_DELAY_S, None
    while True:
        try:
            return action()
        except Exception as exc:
            error = classify(uri, exc, endpoint)
            if isinstance(error, UserError):
                raise error from exc
            now = time.monotonic()
            deadline = deadline or now + patience_s()
            if now + delay > deadline:
                waited = patience_s()
                raise TransientError(f"{error} (still failing after {waited:.0f} s of retries)") from exc
        time.sleep(delay * random.uniform(0.75, 1.25))
        delay = min(2 * delay, _MAX_DELAY_S)
