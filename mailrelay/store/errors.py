"""
errors: the failures of the Redis store, as callers see them.

JOB
    Defines the project's own storage exceptions and :func:`translate`, which turns what
    the Redis client library raises (a lost connection, "Not connected", an error reply)
    into them: nothing outside mailrelay.store sees a txredisapi exception. Callers map
    :class:`StorageUnavailable` to 451 / 503 and :class:`StorageFull` to 452.

SECURITY
    An error's text is Redis's reply or the client's reason; it names keys but never
    carries stored data.

STANDARDS
    The Redis protocol's error replies (RESP 2 ``-ERR ...``, ``-OOM ...``,
    ``-READONLY ...``).

DIAGNOSTICS
    The exceptions' text is what Redis or the client said, e.g. ``READONLY You can't write
    against a read only replica.``, ``Lost connection``, ``Not connected``.

CONFIGURATION
    None.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer


class StorageError(Exception):
    """Base of the storage failures callers map to SMTP replies."""

    #: Redis answered the command with an error reply (a definite answer: it did not run,
    #: e.g. READONLY, OOM), as opposed to no answer at all (a timeout, a lost connection).
    replied: bool = False


class StorageUnavailable(StorageError):
    """Redis did not store the data in time; nothing was stored (451 4.3.0)."""


class StorageFull(StorageError):
    """Redis refuses writes because it is out of memory (452 4.3.1)."""


class RedisFailed(StorageUnavailable):
    """The Redis client failed the command: the connection was lost (or never made), or
    Redis answered with an error reply (:attr:`replied`)."""


class NotSent(StorageUnavailable):
    """The call could not be sent at all (nothing can have been stored)."""


class DataVersionError(StorageError):
    """The Redis data has a format this code cannot use (or cannot migrate now)."""


def translate(error: BaseException) -> BaseException:
    """
    ``error`` as a :class:`StorageError` when the Redis client raised it (a pipeline's
    ``FirstError`` is unwrapped first): an error reply mentioning OOM becomes
    :class:`StorageFull`, any other failure of the client :class:`RedisFailed`; both keep
    the client's text. Anything else (a timeout of ours, a cancellation, a bug) is
    returned unchanged.
    """
    if isinstance(error, defer.FirstError):  # pipelines fail with their first failing command
        inner = error.subFailure.value
        translated = translate(inner)
        return error if translated is inner else translated
    client = sys.modules.get("txredisapi")  # not imported: the error cannot be the client's
    if client is None or not isinstance(error, client.RedisError):
        return error
    text = str(error) or type(error).__name__
    replied = isinstance(error, client.ResponseError)
    result: StorageError = StorageFull(text) if replied and "OOM" in text else RedisFailed(text)
    result.replied = replied
    result.__cause__ = error
    return result


def translate_failure(failure: Any) -> Any:
    """An errback: :func:`translate` applied to a Failure's exception."""
    translated = translate(failure.value)
    if translated is failure.value:
        return failure
    raise translated
