"""
scripts: the Lua scripts of the store, read from ``mailrelay/store/lua/<name>.lua``.

JOB
    Reads each script once (at import), expands its includes and named argument
    positions, and gives it as a :class:`Script` (its source and SHA1). Storage runs
    scripts with :func:`evalsha`: EVALSHA once the script is known to be cached (after
    :func:`load_all`, SCRIPT LOAD of every script when the daemon starts, or a first
    EVAL), and on NOSCRIPT (Redis restarted, failed over, or ran SCRIPT FLUSH) EVAL with
    the source, which runs it and caches it again in Redis.

FILES
    ``lua/<name>.lua``   a script run by Python (``SCRIPTS["<name>"]``). It opens with a
                         comment block whose ``-- KEYS:`` and ``-- ARGV:`` lines say what
                         it takes (tests/test_lua_scripts.py checks this).
    ``lua/_<name>.lua``  a shared piece (Lua functions several scripts use), never run
                         alone; its opening block says ``KEYS``/``ARGV``: none of its own.

INCLUDES
    A line ``--#include <name>`` is replaced by the text of ``lua/<name>.lua`` (itself
    expanded), once per script: a piece included a second time is dropped. This is the
    only way scripts share Lua; nothing is concatenated in Python.

ARGUMENT POSITIONS
    Where Python and Lua must agree on argument positions (the enqueue, settle and
    record scripts), the one definition is an ordered tuple of names here
    (:data:`ENQUEUE_ARGV`, :data:`SETTLE_KEYS`, ...), registered in :data:`LAYOUTS`.
    A name that is a :class:`mailrelay.store.keys.Keys` attribute stands for that key
    or key prefix (:meth:`Keys.names` gives their values). Python builds those ARGV with
    :func:`ordered` and indexes them with :func:`position`; in Lua the loader replaces ``${<layout>.<name>}`` by the
    name's 1-based position, ``${<layout>.#}`` by the number of names, and ``${NAME}``
    by :data:`CONSTANTS`\\ ``[NAME]``. An unknown name is an error at import. Scripts
    whose ARGV only Python reads by position keep plain ``ARGV[n]``, described in
    their opening block.

SECURITY
    Scripts are package data, read from the installed package only; no script text
    comes from configuration or from Redis.

STANDARDS
    Redis scripting (EVAL, EVALSHA, SCRIPT LOAD; Lua 5.1, a script runs atomically, and
    a NOSCRIPT error means nothing ran).

DIAGNOSTICS
    ``KeyError``/``ValueError`` at import: a missing include, an unknown ``${...}``.

CONFIGURATION
    None. Data: the package files ``mailrelay/store/lua/*.lua`` (shipped as package data,
    see setup.cfg); the scripts cached in Redis under their SHA1.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

#: The fixed keys settle() of _settle.lua uses: the first KEYS of every script that settles
#: (settle, sweep_unsettled, enqueue_batch). Each name is the Keys attribute giving the key.
SETTLE_KEYS = ("unsettled", "queue_domains", "time_index", "events")
#: The key prefixes settle() uses, a contiguous block of the ARGV of every script that
#: settles (and of enqueue.lua, which uses some of them). Each name is a Keys attribute.
SETTLE_ARGV = ("msg_prefix", "body_prefix", "timeline_prefix", "domain_queue_prefix",
               "rcpt_index_prefix", "tag_index_prefix", "status_index_prefix",
               "stats_minute_prefix", "stats_hour_prefix")
#: settle.lua's ARGV head; then pairs of action and message id.
SETTLE_SCRIPT_ARGV = SETTLE_ARGV + ("owner",)
#: sweep_unsettled.lua's KEYS and ARGV.
SWEEP_UNSETTLED_KEYS = SETTLE_KEYS + ("cluster",)
SWEEP_UNSETTLED_ARGV = SETTLE_ARGV + ("owner", "min_age_ms", "max_age_ms", "heartbeat_ttl_ms", "limit")

#: enqueue.lua's KEYS (Keys attributes, or the message's own keys: msg, body, timeline).
ENQUEUE_KEYS = ("msg", "body", "unsettled", "events", "timeline", "suppressed_version",
                "time_index", "queued_status_index")
#: enqueue.lua's ARGV, in order; then per recipient: address, queued event (JSON).
ENQUEUE_ARGV = ("id", "deadline_ms", "owner", *SETTLE_ARGV,
                "retention_s", "body_ttl_s", "tag", "fields", "body")
#: The enqueue.lua arguments every message of a Storage shares: sent once per
#: enqueue_batch.lua call. They are contiguous in ENQUEUE_ARGV, in this order.
ENQUEUE_SHARED_ARGV = ("owner", *SETTLE_ARGV, "retention_s", "body_ttl_s")
#: enqueue_batch.lua's ARGV head; then the settlement values and the messages.
ENQUEUE_BATCH_ARGV = ENQUEUE_SHARED_ARGV + ("settlements",)

#: The key prefixes record.lua uses (Keys attributes), and its ARGV head; then 6 values
#: per job.
RECORD_PREFIXES = ("msg_prefix", "timeline_prefix", "domain_queue_prefix", "status_index_prefix",
                   "stats_minute_prefix", "stats_hour_prefix")
RECORD_ARGV = ("owner", "now_ms", *RECORD_PREFIXES)
#: record_bounce.lua's ARGV after the bounce id, at_ms, raw message and the record's fields.
RECORD_BOUNCE_TAIL = ("matched", "rcpt", "state", "event", "suppress_address", "suppression",
                      "message_id", "event_type", "status_index_prefix",
                      "stats_minute_prefix", "stats_hour_prefix", "retention_s",
                      "max_unmatched", "bounce_prefix", "bounce_raw_prefix",
                      "max_per_recipient")

#: archive_snapshot.lua's ARGV head (Keys attributes: key prefixes); then the number of
#: message ids, the message ids, and the bounce ids.
ARCHIVE_SNAPSHOT_ARGV = ("msg_prefix", "timeline_prefix", "body_prefix", "bounce_prefix",
                         "bounce_raw_prefix")

LAYOUTS: dict[str, tuple[str, ...]] = {
    "settle_keys": SETTLE_KEYS,
    "settle_argv": SETTLE_ARGV,
    "settle": SETTLE_SCRIPT_ARGV,
    "sweep_unsettled_keys": SWEEP_UNSETTLED_KEYS,
    "sweep_unsettled": SWEEP_UNSETTLED_ARGV,
    "enqueue_keys": ENQUEUE_KEYS,
    "enqueue": ENQUEUE_ARGV,
    "enqueue_shared": ENQUEUE_SHARED_ARGV,
    "enqueue_batch": ENQUEUE_BATCH_ARGV,
    "record": RECORD_ARGV,
    "record_bounce": RECORD_BOUNCE_TAIL,
    "archive_snapshot": ARCHIVE_SNAPSHOT_ARGV,
}


def position(layout: tuple[str, ...], name: str) -> int:
    """The 0-based index in a Python ARGV list of ``name`` (Lua's is one more)."""
    return layout.index(name)


def ordered(layout: tuple[str, ...], **values: Any) -> list[Any]:
    """An ARGV list in the layout's order; every name of the layout given, no other."""
    if len(values) != len(layout):
        raise TypeError(f"expected {layout}, got {tuple(values)}")
    return [values[name] for name in layout]


_SHARED_FIRST = position(ENQUEUE_ARGV, ENQUEUE_SHARED_ARGV[0])
if ENQUEUE_ARGV[_SHARED_FIRST:_SHARED_FIRST + len(ENQUEUE_SHARED_ARGV)] != ENQUEUE_SHARED_ARGV:
    raise ValueError("ENQUEUE_SHARED_ARGV must be contiguous in ENQUEUE_ARGV")

#: Plain constants the Lua may name as ``${NAME}``.
CONSTANTS: dict[str, int] = {
    "ENQUEUE_SHARED_FIRST": _SHARED_FIRST + 1,   # 1-based, as Lua counts
}

_INCLUDE = re.compile(r"^--#include ([a-z0-9_]+)[ \t]*$", re.M)
_TOKEN = re.compile(r"\$\{([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_#]+))?\}")


@dataclass(frozen=True)
class Script:
    """A Lua script as sent to Redis: its name, expanded source and SHA1 (EVALSHA's)."""

    name: str
    source: str
    sha: str

    @classmethod
    def from_source(cls, name: str, source: str) -> Script:
        return cls(name, source, hashlib.sha1(source.encode()).hexdigest())


def _read(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")


def _expand(name: str, seen: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        piece = match.group(1)
        if piece in seen:
            return ""
        seen.add(piece)
        return _expand(piece, seen)
    return _INCLUDE.sub(include, _read(name))


def _substitute(name: str, text: str) -> str:
    def token(match: re.Match[str]) -> str:
        first, second = match.group(1), match.group(2)
        if second is None:
            if first not in CONSTANTS:
                raise ValueError(f"{name}.lua: unknown constant ${{{first}}}")
            return str(CONSTANTS[first])
        layout = LAYOUTS.get(first)
        if layout is None or (second != "#" and second not in layout):
            raise ValueError(f"{name}.lua: unknown argument ${{{first}.{second}}}")
        return str(len(layout) if second == "#" else layout.index(second) + 1)
    return _TOKEN.sub(token, text)


def script_names() -> list[str]:
    """Every script run by Python (lua/<name>.lua, shared pieces ``_<name>`` excepted)."""
    return sorted(entry.name[:-4] for entry in resources.files(__package__).joinpath("lua").iterdir()
                  if entry.name.endswith(".lua") and not entry.name.startswith("_"))


def load(name: str) -> Script:
    """lua/<name>.lua, expanded."""
    return Script.from_source(name, _substitute(name, _expand(name, {name})))


#: Every script, by name, loaded once.
SCRIPTS: dict[str, Script] = {name: load(name) for name in script_names()}


def _is_noscript(failure: Any) -> bool:
    return str(getattr(failure, "value", failure)).startswith("NOSCRIPT")


def evalsha(execute: Any, script: Script, keys: list[str], args: list[Any], loaded: set[str]) -> Any:
    """
    Run ``script`` by ``execute`` (an ``execute_command`` of a txredisapi connection or
    pool). ``loaded``: the SHA1s of the scripts this Redis is known to have cached (by
    :func:`load_all` or an earlier EVAL). A script known to be loaded goes as EVALSHA;
    when Redis answers NOSCRIPT (nothing ran: running it again is safe), or before it is
    known to be loaded, it goes as EVAL with the source, which also caches it again.
    """
    def by_eval() -> Any:
        d = execute("EVAL", script.source, len(keys), *keys, *args)

        def cached(result: Any) -> Any:
            loaded.add(script.sha)
            return result
        return d.addCallback(cached)

    if script.sha not in loaded:
        return by_eval()

    def noscript(failure: Any) -> Any:
        if _is_noscript(failure):
            loaded.discard(script.sha)
            return by_eval()
        return failure
    return execute("EVALSHA", script.sha, len(keys), *keys, *args).addErrback(noscript)


def load_all(execute: Any, loaded: set[str]) -> Any:
    """SCRIPT LOAD every script (the daemon's start), each added to ``loaded`` once cached."""
    from twisted.internet import defer

    def load(script: Script) -> Any:
        return execute("SCRIPT", "LOAD", script.source).addCallback(lambda _: loaded.add(script.sha))
    return defer.gatherResults([load(script) for script in SCRIPTS.values()], consumeErrors=True)
