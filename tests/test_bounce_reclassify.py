"""
`mailrelay bounce reclassify [--dry-run]` against a real Redis holding bounces stored by the
rules before issue 16: the records, raw bounces and suppression entries are written as that
code wrote them (a HardBounce record, its raw message, a suppression naming its bounce_id),
then the command runs as an operator would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "bounces"


def reclassify(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", "bounce", "reclassify", *args,
                           "-c", str(config_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)


def store_old_bounce(client, prefix: str, bounce_id: str, address: str, old_type: str, *, raw: bytes = b"",
                     source: str = "dsn", status: str = "", details: str = "", suppress: bool = True) -> None:
    """A bounce record (and suppression) as the classifier before issue 16 stored it."""
    client.command("HSET", f"{prefix}bounce:{bounce_id}", "id", bounce_id, "message_id", "0" * 20,
                   "recipient", address, "type", old_type, "type_code", "1" if old_type == "HardBounce" else "256",
                   "status", status, "details", details, "source", source, "proof", "verp",
                   "inactive", "1" if suppress else "0")
    client.command("ZADD", f"{prefix}bounces", 1_700_000_000_000 + int(bounce_id, 16), bounce_id)
    if raw:
        client.command("SET", f"{prefix}bounce:raw:{bounce_id}", raw)
    if suppress:
        client.command("HSET", f"{prefix}suppressed", address, json.dumps(
            {"address": address, "since": "2026-11-01T10:00:00Z", "type": old_type, "reason": details,
             "bounce_id": bounce_id, "message_id": "0" * 20, "proof": "verp"}))


def test_reclassify_reactivates_what_the_old_rules_suppressed(tmp_path, daemon_config, redis_server, unique_prefix):
    config_path = tmp_path / "mailrelay.toml"
    config_path.write_text(daemon_config(redis_server, unique_prefix))
    client = redis_server.client()
    p = unique_prefix
    # 5.2.1 "The email account that you tried to reach is disabled": the old table said HardBounce
    store_old_bounce(client, p, "01", "old.account@example.org", "HardBounce",
                     raw=(CORPUS / "dsn-account-disabled.eml").read_bytes(), status="5.2.1")
    # a refusal at delivery (no raw message): 5.1.1 was HardBounce whatever the text said
    store_old_bounce(client, p, "02", "spam-filtered@example.net", "HardBounce", source="smtp", status="5.1.1",
                     details="550 5.1.1 Message rejected as spam by Content Filtering")
    # still a HardBounce today: stays suppressed, not listed
    store_old_bounce(client, p, "03", "jdoe@example.org", "HardBounce",
                     raw=(CORPUS / "dsn-postfix-user-unknown.eml").read_bytes(), status="5.1.1")
    # a DnsError then, a HardBounce (no such domain) now: the record changes, nobody new is suppressed
    store_old_bounce(client, p, "04", "kim@nonexistent.example.org", "DnsError",
                     raw=(CORPUS / "dns-host-not-found.eml").read_bytes(), status="5.4.4", suppress=False)
    # the same Gmail "disabled" bounce for an address an operator suppressed by hand afterwards
    store_old_bounce(client, p, "05", "manual@example.org", "HardBounce",
                     raw=(CORPUS / "dsn-account-disabled.eml").read_bytes(), status="5.2.1")
    client.command("HSET", f"{p}suppressed", "manual@example.org",
                   json.dumps({"since": "2026-11-02T10:00:00Z", "type": "ManuallyDeactivated",
                               "reason": "asked by the customer"}))
    version_before = client.command("GET", f"{p}suppressed:version")

    def state() -> tuple:
        return (sorted(k.decode() for k in client.command("HKEYS", f"{p}suppressed")),
                [client.command("HGET", f"{p}bounce:{i}", "type") for i in ("01", "02", "03", "04", "05")])

    before = state()
    dry = reclassify(config_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stderr == ""
    rows = [line.split("\t") for line in dry.stdout.splitlines()[:-1]]
    assert [row[:4] for row in rows] == [
        ["01", "old.account@example.org", "HardBounce -> SoftBounce", "would reactivate"],
        ["02", "spam-filtered@example.net", "HardBounce -> SpamNotification", "would reactivate"],
        ["04", "kim@nonexistent.example.org", "DnsError -> HardBounce", "would update"],
        ["05", "manual@example.org", "HardBounce -> SoftBounce", "would update"],
    ]
    assert rows[0][4].startswith("cause-status; status 5.2.1")   # why, for the operator
    assert rows[1][4].startswith("text-over-address-status; status 5.1.1; reply 550; text 'Message rejected as spam'")
    assert dry.stdout.splitlines()[-1] == ("4 bounces reclassified, 2 addresses would be reactivated "
                                           "(dry run: nothing changed)")
    assert state() == before   # a dry run changes nothing

    applied = reclassify(config_path)
    assert applied.returncode == 0, applied.stderr
    assert [line.split("\t")[3] for line in applied.stdout.splitlines()[:-1]] == [
        "reactivated", "reactivated", "updated", "updated"]
    assert applied.stdout.splitlines()[-1] == "4 bounces reclassified, 2 addresses were reactivated"
    suppressed, types = state()
    # the operator's entry and the still-hard bounce stay; no suppression is added for 04
    assert suppressed == ["jdoe@example.org", "manual@example.org"]
    assert types == [b"SoftBounce", b"SpamNotification", b"HardBounce", b"HardBounce", b"SoftBounce"]
    record = client.command("HGETALL", f"{p}bounce:01")
    record = {record[i].decode(): record[i + 1].decode() for i in range(0, len(record), 2)}
    assert (record["type_code"], record["reclassified_from"], record["inactive"], record["rule"]) == (
        "4096", "HardBounce", "0", "cause-status")
    # the RCPT cache of "not suppressed" sees the change
    assert int(client.command("GET", f"{p}suppressed:version") or 0) == int(version_before or 0) + 2

    again = reclassify(config_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "0 bounces reclassified, 0 addresses were reactivated\n"
