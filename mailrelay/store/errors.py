"""
errors: the failures of the Redis store and of the archive database, as callers see them.

JOB
    Defines the project's own storage exceptions and :func:`translate`, which turns what
    the Redis client library raises (a lost connection, "Not connected", an error reply)
    and what psycopg raises when PostgreSQL does not answer (unreachable, restarted, a
    statement past its timeout) into them: nothing outside mailrelay.store sees a
    txredisapi or psycopg exception. Callers map :class:`StorageUnavailable` (with
    :class:`ArchiveUnavailable`) to 451 / 503 and :class:`StorageFull` to 452.

SECURITY
    An error's text is Redis's or PostgreSQL's reply or the client's reason; it names keys
    or statements' failures but never carries stored data.

STANDARDS
    The Redis protocol's error replies (RESP 2 ``-ERR ...``, ``-OOM ...``,
    ``-READONLY ...``); PostgreSQL's SQLSTATE classes 08 (connection exception) and 57
    (operator intervention, 57014 query_canceled) as psycopg's OperationalError.

DIAGNOSTICS
    The exceptions' text is what Redis, PostgreSQL or the client said, e.g. ``READONLY
    You can't write against a read only replica.``, ``Lost connection``, ``Not
    connected``, ``canceling statement due to statement timeout``.

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


class ArchiveUnavailable(StorageUnavailable):
    """The archive database (PostgreSQL) did not answer: unreachable, restarted, or a statement
    ran past the statement timeout (:attr:`timed_out`). Readers answer 503."""

    #: The statement was cancelled by the statement timeout (SQLSTATE 57014), as opposed to a
    #: connection that failed (worth trying again on another).
    timed_out: bool = False


class DataVersionError(StorageError):
    """The Redis data has a format this code cannot use (or cannot migrate now)."""


def translate(error: BaseException) -> BaseException:
    """
    ``error`` as a :class:`StorageError` when the Redis client raised it (a pipeline's
    ``FirstError`` is unwrapped first): an error reply mentioning OOM becomes
    :class:`StorageFull`, any other failure of the client :class:`RedisFailed`; both keep
    the client's text. psycopg's OperationalError (connection lost or refused, server
    shut down, statement timeout) becomes :class:`ArchiveUnavailable` with PostgreSQL's
    text. Anything else (a timeout of ours, a cancellation, a bug, an SQL error) is
    returned unchanged.
    """
    if isinstance(error, defer.FirstError):  # pipelines fail with their first failing command
        inner = error.subFailure.value
        translated = translate(inner)
        return error if translated is inner else translated
    database = sys.modules.get("psycopg")  # not imported: the error cannot be psycopg's
    if database is not None and isinstance(error, database.OperationalError):
        archive = ArchiveUnavailable(str(error).strip() or type(error).__name__)
        archive.timed_out = isinstance(error, database.errors.QueryCanceled)
        archive.__cause__ = error
        return archive
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
