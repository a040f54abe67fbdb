"""``mailrelay archive status`` (issue 18, "Running it"): the archive's database (never its password),
the archiver's lag (entries and age, from Redis), schema version, and per table the days kept,
oldest and newest day, size and estimated rows, in text and ``--json``; the daemon's managed
PostgreSQL found under ``state_dir``; one line per part that cannot be read, the other part still
shown. Run as the operator runs it (``python -m mailrelay.cli``) against the session's PostgreSQL,
on a copy of the migrated template database (conftest's ``archive_databases``), and the session's
Redis under a key prefix of the test's own."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from conftest import today_utc
from mailrelay.store import migrations

ROOT = Path(__file__).resolve().parent.parent
UTC = datetime.timezone.utc
ROWS = 500


def archive_status(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", "archive", "status", "-c", str(config_path), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def fill(conninfo: str, old_day: datetime.date) -> None:
    """The partitions of ``old_day`` (past the default retention) and its next day; ROWS messages
    today, each with a recipient and a body; then ANALYZE, so the estimates are known."""
    now = datetime.datetime.now(UTC)
    with psycopg.connect(conninfo) as conn:
        migrations.create_partitions(conn, old_day, 2)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO messages (id, received_at, status) VALUES (%s, %s, 'delivered')",
                            [(f"m{n}", now) for n in range(ROWS)])
            cur.executemany("INSERT INTO recipients (message_id, received_at, rcpt, recipient, state)"
                            " VALUES (%s, %s, 0, 'a@example.org', 'delivered')", [(f"m{n}", now) for n in range(ROWS)])
            cur.executemany("INSERT INTO bodies (message_id, received_at, body) VALUES (%s, %s, %s)",
                            [(f"m{n}", now, os.urandom(1000)) for n in range(ROWS)])
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


def redis_section(redis_server, prefix: str) -> str:
    return f'[redis]\nurl = "{redis_server.url}"\nkey_prefix = "{prefix}"\n'


def archiver_behind(redis_server, prefix: str, entries: int, oldest_age: float) -> None:
    """The event stream with ``entries`` entries, the oldest ``oldest_age`` seconds old, and the
    archiver's consumer group (mailrelay.store.archivefeed's) that has read none of them."""
    client = redis_server.client()
    try:
        first_ms = int((time.time() - oldest_age) * 1000)
        for n in range(entries):
            client.command("XADD", f"{prefix}events", f"{first_ms + n}-0", "type", "queued", "msg", f"m{n}")
        client.command("XGROUP", "CREATE", f"{prefix}events", "archiver", "0")
    finally:
        client.close()


def with_password(conninfo: str, password: str) -> str:
    """The conninfo as a URL with a password (the test server trusts the socket: it is ignored)."""
    params = dict(item.split("=", 1) for item in conninfo.split())
    return f"postgresql://{params['user']}:{password}@/{params['dbname']}?host={params['host']}"


def test_status_shows_the_database_lag_schema_and_partitions(tmp_path, archive_databases, redis_server,
                                                            unique_prefix):
    conninfo = archive_databases()
    today = today_utc()
    old_day = today - datetime.timedelta(days=60)
    fill(conninfo, old_day)
    archiver_behind(redis_server, unique_prefix, 1204, 90)
    config = tmp_path / "mailrelay.toml"
    config.write_text(f'[archive]\nurl = "{with_password(conninfo, "s3cretpw")}"\n'
                      '[tracking]\nretention = "45d"\ncontent_retention = "7d"\n'
                      + redis_section(redis_server, unique_prefix))

    result = archive_status(config)

    assert result.returncode == 0 and result.stderr == "", result.stdout + result.stderr
    assert "s3cretpw" not in result.stdout
    lines = result.stdout.splitlines()
    dbname = conninfo.rpartition("dbname=")[2]
    assert lines[0].startswith("database ") and lines[0].endswith(f" db {dbname} user mailrelay")
    assert re.fullmatch(r"archive lag +1,204 events not archived yet, the oldest 1m3[0-9]s old", lines[1]), lines[1]
    lines.pop(1)
    assert lines[1].split() == ["schema", "version", "1", "(this", "mailrelay:", "1)"]
    assert lines[2].split() == ["retention", "45d,", "bodies", "7d"]
    assert lines[3].split() == ["TABLE", "DAYS", "OLDEST", "NEWEST", "SIZE", "ROWS"]
    rows = {line.split()[0]: line.split() for line in lines[4:9]}
    newest = today + datetime.timedelta(days=2)  # the template's: today and the next two days
    for table in ("messages", "recipients", "bounces", "bodies"):
        assert rows[table][1:4] == ["5", old_day.isoformat(), newest.isoformat()], rows[table]
        assert rows[table][5] in ("KiB", "MiB")
        assert rows[table][6] == ("0" if table == "bounces" else f"{ROWS}")
    assert rows["total"][3] == f"{3 * ROWS:,}"
    assert lines[9] == (f"8 partitions past retention still there, days {old_day} to "
                        f"{old_day + datetime.timedelta(days=1)} (a running daemon's hourly maintenance drops them)")


def test_status_as_json(tmp_path, archive_databases, redis_server, unique_prefix):
    conninfo = archive_databases()
    today = today_utc()
    old_day = today - datetime.timedelta(days=60)
    fill(conninfo, old_day)
    archiver_behind(redis_server, unique_prefix, 3, 10)
    config = tmp_path / "mailrelay.toml"
    config.write_text(f'[archive]\nurl = "{with_password(conninfo, "s3cretpw")}"\n'
                      + redis_section(redis_server, unique_prefix))

    result = archive_status(config, "--json")

    assert result.returncode == 0 and result.stderr == "", result.stdout + result.stderr
    assert "s3cretpw" not in result.stdout
    status = json.loads(result.stdout)
    assert (status["schema_version"], status["latest_schema_version"], status["managed"]) == (1, 1, False)
    assert status["database"] == status["read_database"]
    assert (status["retention_s"], status["content_retention_s"]) == (45 * 86400, 7 * 86400)
    assert status["lag"]["entries"] == 3 and 10 <= status["lag"]["oldest_age_s"] < 40
    assert (status["database_error"], status["lag_error"]) == (None, None)
    tables = {t["table"]: t for t in status["tables"]}
    assert list(tables) == ["messages", "recipients", "bounces", "bodies"]
    assert tables["messages"]["days"] == 5
    assert (tables["bodies"]["oldest"], tables["bodies"]["newest"]) == (
        old_day.isoformat(), (today + datetime.timedelta(days=2)).isoformat())
    assert tables["messages"]["rows_estimate"] == ROWS and tables["bounces"]["rows_estimate"] == 0
    assert tables["bodies"]["size_bytes"] > ROWS * 1000  # the bodies are incompressible
    assert status["total_size_bytes"] == sum(t["size_bytes"] for t in status["tables"])
    by_name = {p["name"]: p for p in status["partitions"]}
    assert len(by_name) == 20
    assert by_name[f"bodies_p{today:%Y%m%d}"]["rows_estimate"] == ROWS
    assert sum(p["size_bytes"] for p in status["partitions"]) == status["total_size_bytes"]
    assert sorted(status["past_retention"]) == sorted(f"{t}_p{d:%Y%m%d}" for t in tables
                                                      for d in (old_day, old_day + datetime.timedelta(days=1)))


def test_status_of_the_managed_postgresql_under_state_dir(tmp_path, postgres_server, archive_template,
                                                          redis_server, unique_prefix):
    # the daemon's managed PostgreSQL: its socket in state_dir/postgresql/, its database mailrelay
    # (here the session server's socket, linked there, and a copy of the template named mailrelay)
    state_dir = tmp_path / "state"
    (state_dir / "postgresql").mkdir(parents=True)
    os.symlink(postgres_server.socket_dir / ".s.PGSQL.5432", state_dir / "postgresql" / ".s.PGSQL.5432")
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE mailrelay TEMPLATE {archive_template}")
    try:
        config = tmp_path / "mailrelay.toml"
        config.write_text(f'[server]\nstate_dir = "{state_dir}"\n' + redis_section(redis_server, unique_prefix))
        result = archive_status(config, "--json")
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS mailrelay WITH (FORCE)")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["managed"] is True
    assert status["database"] == f"unix:{state_dir / 'postgresql'} db mailrelay user mailrelay"
    assert [t["days"] for t in status["tables"]] == [3, 3, 3, 3]
    assert status["lag"] is None and status["lag_error"] is None  # no archiver group on this prefix


def test_database_unreachable_the_lag_is_still_shown(tmp_path, postgres_server, redis_server, unique_prefix):
    archiver_behind(redis_server, unique_prefix, 5, 30)
    url = f"postgresql://mailrelay:s3cretpw@/nosuchdb?host={postgres_server.socket_dir}"
    config = tmp_path / "mailrelay.toml"
    config.write_text(f'[archive]\nurl = "{url}"\nconnect_timeout = "2s"\n' + redis_section(redis_server, unique_prefix))

    result = archive_status(config)

    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"database        unix:{postgres_server.socket_dir} db nosuchdb user mailrelay"
    assert result.stdout.splitlines()[1].startswith("archive lag     5 events not archived yet, the oldest 3")
    assert len(result.stdout.splitlines()) == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"mailrelay: archive database at unix:{postgres_server.socket_dir} db nosuchdb "
                                    "user mailrelay: connection failed: ")
    assert "s3cretpw" not in result.stdout + result.stderr

    as_json = json.loads(archive_status(config, "--json").stdout)
    assert as_json["lag"]["entries"] == 5 and as_json["database_error"].startswith("mailrelay: archive database at ")
    assert "tables" not in as_json


def test_redis_unreachable_the_database_is_still_shown(tmp_path, archive_databases):
    conninfo = archive_databases()
    config = tmp_path / "mailrelay.toml"
    config.write_text(f'[archive]\nurl = "{conninfo}"\n[redis]\nurl = "redis://127.0.0.1:1/0"\ntimeout = "2s"\n')

    result = archive_status(config)

    assert result.returncode == 1
    assert "archive lag" not in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[3:8]] == [
        "TABLE", "messages", "recipients", "bounces", "bodies"]
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("mailrelay: Redis at 127.0.0.1:1 db 0"), \
        result.stderr


def test_neither_managed_server_running_is_one_line_each(tmp_path):
    state = tmp_path / "state"
    config = tmp_path / "mailrelay.toml"
    config.write_text(f'[server]\nstate_dir = "{state}"\n')

    result = archive_status(config)

    assert result.returncode == 1
    assert result.stdout == f"database        unix:{state}/postgresql db mailrelay user mailrelay (managed)\n"
    assert sorted(result.stderr.splitlines()) == [
        f"mailrelay: the daemon's managed PostgreSQL is not running (no socket in {state}/postgresql)",
        f"mailrelay: the daemon's managed Redis is not running (no socket at {state}/redis/redis.sock)"]
