"""The archive in the daemon: [archive] settings, the schema made at start, PostgreSQL down at start
(mail goes on, one warning, picked up later) and the managed PostgreSQL under state_dir."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from conftest import new_database, today_utc
from mailrelay.config import ConfigError, parse_config, render_config
from mailrelay.store.archivedb import describe_conninfo
from peers import send

CLEAN_EXIT = (0, -signal.SIGTERM)
TRUSTED = {"trusted_networks": ["127.0.0.0/8"]}
NO_WEB = {"listen": []}
READY = r"archive database at .*: schema version \d+ ready"
WARNING = r"archive database at .*the archive waits, mail is accepted and delivered; retrying"


def partitions(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'messages_p%'").fetchall()
    return {name for (name,) in rows}


def schema_version(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchone()[0]


@pytest.fixture
def short_dir():
    """A short directory under /tmp that a root test run's ``postgres`` user can reach."""
    path = Path(tempfile.mkdtemp(prefix="mrw", dir="/tmp"))
    os.chmod(path, 0o701)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- configuration ---------------------------------------------------------------------------


def test_archive_settings_parse_and_default():
    default = parse_config({}).archive
    assert (default.url, default.read_url, default.statement_timeout, default.connect_timeout) == ("", "", 5.0, 3.0)
    archive = parse_config({"archive": {
        "url": "postgresql://mr:pw@db.example:5433/mailrelay?sslmode=require",
        "read_url": "host=/run/postgresql port=5432 dbname=mailrelay user=mr",
        "statement_timeout": "250ms", "connect_timeout": "10s"}}).archive
    assert archive.read_url.startswith("host=/run/postgresql")
    assert (archive.statement_timeout, archive.connect_timeout) == (0.25, 10.0)


@pytest.mark.parametrize("table, key, words", [
    ({"url": "http://mr:s3cret@db/x"}, "archive.url", "scheme must be postgresql://"),
    ({"url": "host=db password=s3cret colour=blue"}, "archive.url", 'invalid connection option "colour"'),
    ({"read_url": "postgresql://mr:s3cret@db/x?bogus=1"}, "archive.read_url", "invalid URI query parameter"),
    ({"url": "postgresql://mr:s3cret@db:99999/x"}, "archive.url", "port '99999'"),
    ({"url": "just words"}, "archive.url", "not a PostgreSQL URL or conninfo"),
    ({"url": 5432}, "archive.url", "expected a PostgreSQL URL"),
    ({"statement_timeout": "5"}, "archive.statement_timeout", "is not a duration"),
    ({"connect_timeout": "0s"}, "archive.connect_timeout", "longer than zero"),
    ({"replica": ""}, "archive.replica", "unknown key"),
])
def test_bad_archive_settings_are_one_line_errors_without_the_password(table, key, words):
    with pytest.raises(ConfigError) as caught:
        parse_config({"archive": table})
    message = str(caught.value)
    assert message.startswith(f"{key}: ") and words in message, message
    assert "\n" not in message and "s3cret" not in message


def test_render_config_masks_only_the_password():
    config = parse_config({"archive": {"url": "postgresql://mr:s3cret@db.example:5433/mailrelay",
                                       "read_url": "host=replica.example password='s 3cret' dbname=mailrelay"}})
    text = render_config(config)
    assert "s3cret" not in text and "s 3cret" not in text
    assert 'url = "postgresql://mr:********@db.example:5433/mailrelay"' in text
    assert 'read_url = "host=replica.example password=******** dbname=mailrelay"' in text
    assert '[archive]\nurl = ' in text and 'statement_timeout = "5s"' in text


def test_check_config_shows_the_archive_masked(tmp_path):
    path = tmp_path / "mailrelay.toml"
    path.write_text('[archive]\nurl = "postgresql://mr:s3cret@db.example/mailrelay"\nconnect_timeout = "4s"\n')
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "check-config", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    section = result.stdout.split("[archive]\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == ['url = "postgresql://mr:********@db.example/mailrelay"', 'read_url = ""',
                                    'statement_timeout = "5s"', 'connect_timeout = "4s"', 'release_after = "1m"']


def test_describe_conninfo_names_the_place_never_the_password():
    assert describe_conninfo("postgresql://mr:s3cret@db.example:5433/mailrelay") == \
        "db.example:5433 db mailrelay user mr"
    assert describe_conninfo("host=/run/pg user=mr dbname=archive password=s3cret") == \
        "unix:/run/pg db archive user mr"


# -- the daemon ------------------------------------------------------------------------------


def test_daemon_migrates_an_empty_database_and_makes_partitions(start_daemon, daemon_config, redis_server,
                                                                  unique_prefix, postgres_server):
    with new_database(postgres_server) as conninfo:
        d = start_daemon(daemon_config(redis_server, unique_prefix, archive={"url": conninfo},
                                       web=NO_WEB, delivery={"enabled": False}))
        line = d.wait_for_matches(READY)[0]  # may come before or after "mailrelay ready"
        assert "(applied 1)" in line.string and "12 partitions made" in line.string  # 4 tables x 3 days
        assert schema_version(conninfo) == 1
        # then the partition maintenance (services/archivemaint.py) makes the 4th day ahead
        d.wait_for_line(r"archive maintenance: dropped 0 partitions past retention \(none\), made 4$")
        today = today_utc()
        days = [today.fromordinal(today.toordinal() + i).strftime("%Y%m%d") for i in range(4)]
        assert partitions(conninfo) == {f"messages_p{day}" for day in days}
        assert d.stop() in CLEAN_EXIT


def test_postgresql_down_at_start_mail_goes_on_and_the_archive_is_picked_up_later(
        start_daemon, daemon_config, redis_server, unique_prefix, postgres_server, sink, short_dir):
    # The url leads to a socket directory where no server listens yet; the test then makes the
    # server appear there (a symlink to the session PostgreSQL's socket).
    with new_database(postgres_server) as conninfo:
        dbname = conninfo.rpartition("dbname=")[2]
        url = f"postgresql://mailrelay:s3cretpw@/{dbname}?host={short_dir}"
        d = start_daemon(daemon_config(redis_server, unique_prefix, archive={"url": url}, submission=TRUSTED,
                                       delivery={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_tls": "none"}))
        d.wait_for_matches(WARNING)  # and "ready" was logged: the start did not wait for PostgreSQL
        message_id = send(d.ports["submission"], ["someone@anywhere.invalid"])  # 250
        d.wait_for_line(rf"{message_id}: to=<someone@anywhere\.invalid>.*status=sent")
        d.wait_for_line(r"archive database at .* still not ready: .*next try in")  # a retry, silent
        assert len(d.find_lines(WARNING)) == 1
        assert not partitions(conninfo)

        os.symlink(postgres_server.socket_dir / ".s.PGSQL.5432", short_dir / ".s.PGSQL.5432")
        d.wait_for_matches(READY, timeout=30)
        assert schema_version(conninfo) == 1 and partitions(conninfo)
        assert len(d.find_lines(WARNING)) == 1
        assert d.stop() in CLEAN_EXIT
        assert "s3cretpw" not in d.log_text()
        assert d.find_lines(rf"archive: writes to unix:{re.escape(str(short_dir))} db {dbname} user mailrelay")


def test_managed_postgresql_under_state_dir(start_daemon, daemon_config, redis_server, unique_prefix, short_dir):
    state = short_dir / "state"
    d = start_daemon(daemon_config(redis_server, unique_prefix, archive={"url": None}, web=NO_WEB,
                                   delivery={"enabled": False}, server={"state_dir": str(state)}))
    d.wait_for_lines([r"archive: created database mailrelay in the managed PostgreSQL",
                      READY + r" \(applied 1\), 12 partitions made"], timeout=60)
    directory = state / "postgresql"
    assert (directory / "data" / "PG_VERSION").exists()
    pid = int((directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
    conninfo = f"host={directory} user=mailrelay dbname=mailrelay"
    assert schema_version(conninfo) == 1 and len(partitions(conninfo)) == 3

    assert d.stop() in CLEAN_EXIT
    assert not Path(f"/proc/{pid}").exists()
    log = (directory / "postgresql.log").read_text()
    assert "database system is shut down" in log
    # the pools were closed before the server stopped: no connection was cut
    assert "terminating connection due to administrator command" not in log
