"""
A message's status from its recipients' states is decided the same way in Redis (lua/_status.lua,
``update_status``) and in Python (mailrelay.store.records.message_status, which the archive uses
for late events): every combination of up to three recipients over every state (and a missing or
unknown one) is run through both, against a real redis-server.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from mailrelay.store.records import RECIPIENT_STATES, message_status

STATUS_LUA = Path(__file__).resolve().parent.parent / "mailrelay" / "store" / "lua" / "_status.lua"

#: Runs the shared piece on one hash: update_status(KEYS[1], id, status prefix), then its status.
DRIVER = """
update_status(KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], 'status')
"""

#: None: no ``state:<i>`` stored; "delivering": a state no table lists (a job being delivered).
STATES = (None, *RECIPIENT_STATES, "delivering")


def cases() -> list[tuple[str | None, ...]]:
    return [combo for n in range(4) for combo in itertools.product(STATES, repeat=n)]


def test_python_and_lua_agree_on_every_combination(redis_server, unique_prefix):
    script = STATUS_LUA.read_text("utf-8") + DRIVER
    key = f"{unique_prefix}msg:status-test"
    client = redis_server.client()
    checked = 0
    for states in cases():
        client.command("DEL", key)
        fields = ["rcpt_count", len(states), "received_at", 1, "status", "before"]
        for index, state in enumerate(states):
            if state is not None:
                fields += [f"state:{index}", state]
        client.command("HSET", key, *fields)
        lua = client.command("EVAL", script, 1, key, "status-test", f"{unique_prefix}idx:status:").decode()
        python = message_status(states)
        assert (python if python is not None else "before") == lua, states
        checked += 1
    client.command("DEL", key, *(f"{unique_prefix}idx:status:{s}" for s in
                                 ("before", "queued", "partial", *RECIPIENT_STATES)))
    assert checked == 1 + 9 + 81 + 729


def test_the_rule_in_words():
    assert message_status([]) is None
    assert message_status(["delivered", "deferred"]) == "queued"
    assert message_status(["delivered", None]) == "queued"
    assert message_status(["bounced", "bounced"]) == "bounced"
    assert message_status(["deleted", "suppressed"]) == "suppressed"
    assert message_status(["delivered", "bounced", "deferred"]) == "queued"
    assert message_status(["delivered", "bounced"]) == "partial"
