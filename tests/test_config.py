"""Configuration validation and the `mailrelay` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailrelay import config
from mailrelay.config import ConfigError, parse_config
from mailrelay.passwords import hash_password, verify_password


def test_defaults_are_safe_and_local():
    c = config.Config()
    assert c.submission.listen == ("tcp:2587:interface=127.0.0.1",)
    assert c.submission.listen_tls == ("tcp:2465:interface=127.0.0.1",)
    assert c.redis.url == "" and c.redis.appendfsync == "always"
    assert c.submission.trusted_networks == ()
    assert c.submission.require_tls_for_auth is True


def test_values_are_parsed():
    c = parse_config({
        "submission": {"idle_timeout": "30s", "data_timeout": "2h", "rate_limit_per_user": "1000/1m",
                       "trusted_networks": ["10.0.0.0/8", "::1/128"], "max_message_size": 1024},
        "redis": {"url": "redis://:pw@127.0.0.1:6380/2", "timeout": "1500ms"},
    })
    assert c.submission.idle_timeout == 30 and c.submission.data_timeout == 7200
    assert c.submission.rate_limit_per_user == config.Rate(1000, 60)
    assert c.redis.timeout == 1.5
    assert config.parse_redis_url(c.redis.url) == config.RedisAddress(
        host="127.0.0.1", port=6380, db=2, password="pw")


@pytest.mark.parametrize("data, names", [
    ({"submission": {"max_recipents": 5}}, "submission.max_recipents: unknown key"),
    ({"smtp": {}}, "[smtp]: unknown section"),
    ({"submission": {"max_recipients": "5"}}, "submission.max_recipients: expected an integer"),
    ({"submission": {"require_tls_for_auth": 1}}, "submission.require_tls_for_auth: expected true or false"),
    ({"submission": {"max_message_size": True}}, "submission.max_message_size: expected an integer number of bytes, got a boolean"),
    ({"submission": {"idle_timeout": 30}}, "submission.idle_timeout: expected a duration"),
    ({"submission": {"idle_timeout": "30 parsecs"}}, "submission.idle_timeout:"),
    ({"submission": {"listen": ["tcp:notaport"]}}, "submission.listen[0]: 'tcp:notaport' is not a usable endpoint"),
    ({"submission": {"listen": ["bogus:1"]}}, "submission.listen[0]:"),
    ({"submission": {"trusted_networks": ["10.0.0.0/33"]}}, "submission.trusted_networks[0]:"),
    ({"submission": {"users": {"alice": "plaintext"}}}, "submission.users.alice: not a password hash"),
    ({"submission": {"auth_failures_per_ip": "ten"}}, "submission.auth_failures_per_ip:"),
    ({"tls": {"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}}, "tls.cert: file '/nonexistent/cert.pem' does not exist"),
    ({"tls": {"min_version": "1.1"}}, "tls.min_version:"),
    ({"redis": {"url": "http://x"}}, "redis.url:"),
    ({"redis": {"appendfsync": "no"}}, "redis.appendfsync:"),
    ({"redis": {"sentinels": ["nohost"]}}, "redis.sentinels[0]: 'nohost' is not host:port"),
])
def test_bad_values_name_the_key(data, names):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(names), str(info.value)


def test_render_masks_secrets():
    hashed = hash_password("pw", log_n=10)
    c = parse_config({"submission": {"users": {"alice": hashed}},
                      "redis": {"url": "redis://:topsecret@127.0.0.1:6379/0"}})
    text = config.render_config(c)
    assert "topsecret" not in text and hashed not in text
    assert 'users = { "alice" = "********" }' in text
    assert 'url = "redis://:********@127.0.0.1:6379/0"' in text
    # the rendering is itself a valid configuration
    import tomllib
    again = parse_config(tomllib.loads(config.render_config(config.Config())))
    assert config.render_config(again) == config.render_config(config.Config())


def test_password_hash_round_trip():
    hashed = hash_password("correct horse", log_n=10)
    assert verify_password("correct horse", hashed)
    assert not verify_password("wrong", hashed)
    assert hash_password("correct horse", log_n=10) != hashed  # salted


def run_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_cli_version():
    from mailrelay import __version__
    result = run_cli("version")
    assert result.returncode == 0 and result.stdout.strip() == f"mailrelay {__version__}"


def test_cli_hash_password_reads_stdin():
    result = run_cli("hash-password", stdin="s3cret\n")
    assert result.returncode == 0
    assert verify_password("s3cret", result.stdout.strip())


def test_cli_check_config_ok_and_error(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[submission]\nmax_recipients = 7\n')
    result = run_cli("check-config", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "max_recipients = 7" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[submission]\nmax_recipients = "seven"\n')
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "submission.max_recipients" in lines[0] and "Traceback" not in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[submission\n")
    result = run_cli("check-config", "-c", str(broken))
    assert result.returncode != 0 and "not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_endpoints_are_checked_for_syntax_only():
    c = parse_config({"submission": {"listen": ["systemd:domain=INET:index=0"]}})
    assert c.submission.listen == ("systemd:domain=INET:index=0",)
    with pytest.raises(ConfigError, match=r"submission.listen\[0\]"):
        parse_config({"submission": {"listen": ["systemd:domain=IPX:index=0"]}})
