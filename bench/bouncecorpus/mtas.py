"""
mtas: how each MTA under test is configured, started, flushed and stopped inside its chroot.

Every MTA gets the same world (cases.py): it is mta.relay.test on 127.0.0.1, resolves through
127.0.0.1:53, relays every message it is given by MX lookup, and gives up a temporarily failing
message after a very short queue lifetime (seconds to a couple of minutes instead of days), so
that expiry bounces are produced quickly. Delay warnings are off. Nothing else is changed from
Debian's defaults, so that the bounces are worded as each MTA words them.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cases

HOSTNAME = "mta.relay.test"


@dataclass
class MTA:
    name: str
    configure: Callable[[Path, str], None]      # (chroot, profile)
    start: list[str]                 # run inside the chroot
    stop: list[str]
    flush: list[str] | None          # force a queue run; None: the daemon does it by itself
    sendmail: list[str]              # the injection command (recipients appended)
    logs: tuple[str, ...]
    expiry_seconds: int              # how long until a temporarily failing message is given up
    reset: str = ""                  # shell command (in the chroot) that empties the queue
    # libasr (OpenSMTPD) resolves with AI_ADDRCONFIG, which ignores loopback interfaces: give
    # the namespace a dummy, non-loopback interface holding another 127/8 address
    dummy_interface: bool = False
    ready_path: str = ""             # exists in the chroot once the daemon takes submissions
    inject_smtp: bool = False        # no sendmail command: submit over SMTP to 127.0.0.1:25
    # "fail": temporary failures are given up at once (expiry bounces); "delay": they are kept
    # for a day and the MTA sends its delay warning after seconds
    profiles: tuple[str, ...] = ("fail", "delay")


def _write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


# -- Postfix ----------------------------------------------------------------------------------

POSTFIX_MAIN = f"""\
# bench/bouncecorpus: Postfix as an outbound relay for the bounce corpus
compatibility_level = 3.6
myhostname = {HOSTNAME}
mydomain = relay.test
myorigin = $myhostname
mydestination = $myhostname, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps = hash:/etc/aliases
alias_database = hash:/etc/aliases
biff = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = /var/log/postfix.log
mailbox_command = /usr/lib/dovecot/dovecot-lda -c /etc/dovecot/bouncecorpus-lda.conf -f "$SENDER" -a "$RECIPIENT"
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
"""
POSTFIX_PROFILES = {
    # temporary failures: tried once, then returned (maximal_queue_lifetime = 0)
    "fail": "maximal_queue_lifetime = 0\nbounce_queue_lifetime = 0\ndelay_warning_time = 0\n",
    "delay": "maximal_queue_lifetime = 1d\nbounce_queue_lifetime = 1d\ndelay_warning_time = 2s\n",
}


def vacation_users(mta: str) -> list[str]:
    return [login for login, (owner, _, _) in cases.VACATION_USERS.items() if owner == mta]


def write_vacation_homes(root: Path, mta: str) -> None:
    for login in vacation_users(mta):
        _owner, prefix, body = cases.VACATION_USERS[login]
        home = f"/home/{login}"
        if mta == "postfix":
            _write(root, f"{home}/.forward", f'\\{login}, "|/usr/bin/vacation {login}"\n')
            _write(root, f"{home}/.vacation.msg",
                   f"Subject: {prefix}$SUBJECT\nMIME-Version: 1.0\n"
                   "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + body)
        else:
            _write(root, f"{home}/.forward",
                   "# Exim filter\nif personal then\n"
                   f'  vacation subject "{prefix}$h_subject:"\n'
                   "endif\n")
            _write(root, f"{home}/.vacation.msg", body)


DOVECOT_LDA_CONF = f"""\
# bench/bouncecorpus: Dovecot's LDA, run by Postfix's local(8) as the recipient, with Sieve
protocols =
ssl = no
hostname = {HOSTNAME}
postmaster_address = postmaster@{HOSTNAME}
mail_location = maildir:~/Maildir
sendmail_path = /usr/sbin/sendmail
log_path = /var/log/dovecot-lda.log
protocol lda {{
  mail_plugins = sieve
}}
plugin {{
  sieve = file:~/sieve;active=~/.dovecot.sieve
}}
"""


DOVECOT_QUOTA_CONF = DOVECOT_LDA_CONF.replace("mail_plugins = sieve", "mail_plugins = quota") + """\
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1B
}
"""


def write_sieve_homes(root: Path) -> None:
    _write(root, "/etc/dovecot/bouncecorpus-lda.conf", DOVECOT_LDA_CONF)
    _write(root, "/etc/dovecot/bouncecorpus-quota.conf", DOVECOT_QUOTA_CONF)
    login = cases.QUOTA_USER
    _write(root, f"/home/{login}/.forward",
           '"|/usr/lib/dovecot/dovecot-lda -c /etc/dovecot/bouncecorpus-quota.conf '
           '-f \\"$SENDER\\" -a \\"$RECIPIENT\\""\n')
    log = root / "var/log/dovecot-lda.log"
    log.touch()
    log.chmod(0o666)
    for login, (prefix, body) in cases.SIEVE_USERS.items():
        _write(root, f"/home/{login}/.dovecot.sieve",
               'require ["vacation", "variables"];\n'
               'if header :matches "subject" "*" { set "subject" "${1}"; }\n'
               f'vacation :days 1 :subject "{prefix}${{subject}}" "{body}";\n')


def add_users(mta: str, init: str = "") -> str:
    """Shell (run in the chroot at start) that creates the vacation users and owns their homes."""
    parts = []
    if mta == "postfix":
        for login in [*cases.SIEVE_USERS, cases.QUOTA_USER]:
            parts.append(f"(id -u {login} >/dev/null 2>&1 || useradd -M -d /home/{login} -s /bin/sh {login}) && "
                         f"rm -rf /home/{login}/.dovecot.lda-dupes* /home/{login}/sieve /home/{login}/Maildir && "
                         f"chown -R {login}: /home/{login} && chmod 755 /home/{login} && "
                         f"chmod 644 /home/{login}/.forward 2>/dev/null; true")
    for login in vacation_users(mta):
        parts.append(f"(id -u {login} >/dev/null 2>&1 || useradd -M -d /home/{login} -s /bin/sh {login}) && "
                     f"chown -R {login}: /home/{login} && chmod 755 /home/{login} && "
                     f"chmod 644 /home/{login}/.forward && "
                     f"rm -f /home/{login}/.vacation /home/{login}/.vacation.db* /home/{login}/.vacation.log")   # forget past replies
        if init:
            parts.append(f"su -s /bin/sh {login} -c '{init}'")
    return " && ".join(parts) + " && " if parts else ""


def configure_postfix(root: Path, profile: str) -> None:
    write_vacation_homes(root, "postfix")
    write_sieve_homes(root)
    _write(root, "/etc/postfix/main.cf", POSTFIX_MAIN + POSTFIX_PROFILES[profile])
    master = (root / "etc/postfix/master.cf").read_text()
    # Debian runs the services chrooted in /var/spool/postfix, which needs copies of
    # resolv.conf etc. that only Debian's init script makes: run them unchrooted instead.
    lines = []
    for line in master.splitlines():
        fields = line.split()
        if len(fields) >= 8 and not line.startswith((" ", "\t", "#")) and fields[4] in ("y", "-"):
            fields[4] = "n"
            line = "  ".join(fields)
        lines.append(line)
    (root / "etc/postfix/master.cf").write_text("\n".join(lines) + "\n")
    _write(root, "/etc/aliases", "postmaster: root\n")


POSTFIX = MTA("postfix", configure_postfix,
              start=["sh", "-c", add_users("postfix", "vacation -i") + "newaliases && postfix start"],
              stop=["postfix", "stop"],
              flush=["postqueue", "-f"],
              sendmail=["/usr/sbin/sendmail", "-oi", "-f"],
              logs=("/var/log/postfix.log", "/var/log/dovecot-lda.log"),
              expiry_seconds=20,
              reset="postsuper -d ALL >/dev/null 2>&1; rm -f /var/log/postfix.log")


# -- Exim -------------------------------------------------------------------------------------

EXIM_UPDATE_CONF = f"""\
dc_eximconfig_configtype='internet'
dc_other_hostnames=''
dc_local_interfaces='127.0.0.1'
dc_readhost=''
dc_relay_domains=''
dc_minimaldns='false'
dc_relay_nets='127.0.0.0/8'
dc_smarthost=''
CFILEMODE='644'
dc_use_split_config='false'
dc_hide_mailname=''
dc_mailname_in_oh='true'
dc_localdelivery='mail_spool'
"""


EXIM_PROFILES = {"fail": ("F,1m,15s", ""), "delay": ("F,1d,10s", "delay_warning = 15s")}


def configure_exim(root: Path, profile: str) -> None:
    retry, main_option = EXIM_PROFILES[profile]
    write_vacation_homes(root, "exim")
    _write(root, "/etc/exim4/update-exim4.conf.conf", EXIM_UPDATE_CONF)
    _write(root, "/etc/mailname", HOSTNAME + "\n")
    template = root / "etc/exim4/exim4.conf.template"
    text = template.read_text()
    # Debian's dnslookup router ignores MX targets on loopback; our world lives on 127/8.
    _write(root, "/etc/exim4/exim4.conf.localmacros",
           "ROUTER_DNSLOOKUP_IGNORE_TARGET_HOSTS = <; 0.0.0.0 ; 255.255.255.255\n")
    # Retry: give up a temporarily failing address after one minute instead of four days.
    text = re.sub(r"(?ms)^(begin retry\s*\n).*?(?=^begin )",
                  f"begin retry\n\n*                      *           {retry}\n\n\n", text)
    text = re.sub(r"(?m)^# bouncecorpus\n.*\n", "", text)
    text = text.replace("\nbegin acl\n", f"\n# bouncecorpus\n{main_option}\nbegin acl\n", 1)
    text = text.replace("MAIN_TLS_ENABLE = yes", "")
    template.write_text(text)


EXIM = MTA("exim", configure_exim,
           start=["sh", "-c", add_users("exim") + "update-exim4.conf && mkdir -p /var/log/exim4 /run/exim4 && "
                  "chown Debian-exim /var/log/exim4 /run/exim4 && exim4 -bd -q10s"],
           stop=["sh", "-c", "kill $(cat /run/exim4/exim.pid)"],
           flush=["exim4", "-qff"],
           sendmail=["/usr/sbin/sendmail", "-oi", "-f"],
           logs=("/var/log/exim4/mainlog", "/var/log/exim4/rejectlog", "/var/log/exim4/paniclog"),
           expiry_seconds=150,
           reset="rm -rf /var/spool/exim4/input/* /var/spool/exim4/msglog/* /var/spool/exim4/db/*")


# -- OpenSMTPD ------------------------------------------------------------------------------

OPENSMTPD_PROFILES = {"fail": "queue ttl 20s\n", "delay": "queue ttl 1d\nbounce warn-interval 10s\n"}
OPENSMTPD_CONF = f"""\
# bench/bouncecorpus: OpenSMTPD as an outbound relay for the bounce corpus
table aliases file:/etc/aliases
listen on 127.0.0.1
action "local" mbox alias <aliases>
action "outbound" relay helo {HOSTNAME}
match from local for local action "local"
match from local for any action "outbound"
"""


def configure_opensmtpd(root: Path, profile: str) -> None:
    _write(root, "/etc/smtpd.conf", OPENSMTPD_PROFILES[profile] + OPENSMTPD_CONF)
    _write(root, "/etc/aliases", "postmaster: root\n")
    _write(root, "/etc/mailname", HOSTNAME + "\n")


OPENSMTPD = MTA("opensmtpd", configure_opensmtpd,
                start=["sh", "-c", "mkdir -p /var/spool/smtpd && chmod 711 /var/spool/smtpd && "
                       "(smtpd -d -f /etc/smtpd.conf >/var/log/smtpd.log 2>&1 & echo $! >/run/smtpd.fg.pid)"],
                stop=["sh", "-c", "kill $(cat /run/smtpd.fg.pid)"],   # 6.8's smtpctl has no "stop"
                flush=None,
                sendmail=["/usr/sbin/sendmail", "-oi", "-f"],
                logs=("/var/log/smtpd.log",),
                expiry_seconds=60,
                reset="rm -rf /var/spool/smtpd/queue/* /var/spool/smtpd/incoming/* "
                      "/var/spool/smtpd/corrupt/* /var/spool/smtpd/offline/* /var/spool/smtpd/purge/*",
                dummy_interface=True,
                ready_path="/run/smtpd.sock")


# -- sendmail -------------------------------------------------------------------------------

SENDMAIL_PROFILES = {
    "fail": "define(`confTO_QUEUERETURN', `1m')dnl\ndefine(`confTO_QUEUEWARN', `4h')dnl\n",
    "delay": "define(`confTO_QUEUERETURN', `5d')dnl\ndefine(`confTO_QUEUEWARN', `10s')dnl\n",
}
SENDMAIL_MC = """\
divert(-1)
# bench/bouncecorpus: sendmail as an outbound relay for the bounce corpus
divert(0)dnl
include(`/usr/share/sendmail/cf/m4/cf.m4')dnl
VERSIONID(`bouncecorpus')dnl
OSTYPE(`debian')dnl
DOMAIN(`debian-mta')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
{profile}define(`confMIN_QUEUE_AGE', `0')dnl
define(`confTO_IDENT', `0')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port=smtp, Addr=127.0.0.1')dnl
MAILER_DEFINITIONS
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


def configure_sendmail(root: Path, profile: str) -> None:
    _write(root, "/etc/mail/sendmail.mc",
           SENDMAIL_MC.replace("{hostname}", HOSTNAME).replace("{profile}", SENDMAIL_PROFILES[profile]))
    _write(root, "/etc/mail/local-host-names", HOSTNAME + "\n")
    _write(root, "/etc/mailname", HOSTNAME + "\n")


SENDMAIL = MTA("sendmail", configure_sendmail,
               start=["sh", "-c",
                      "cd /etc/mail && m4 sendmail.mc > sendmail.cf && touch access aliases && "
                      "makemap hash access < access && newaliases; "
                      "mkdir -p /var/spool/mqueue /var/spool/mqueue-client /run/sendmail/mta /var/lib/sendmail/host_status && "
                      "/usr/sbin/sendmail-mta -bd -q10s -L sendmail-mta "
                      "-O PidFile=/run/sendmail/mta/sendmail.pid"],
               stop=["sh", "-c", "kill $(head -1 /run/sendmail/mta/sendmail.pid)"],
               flush=["/usr/sbin/sendmail-mta", "-q"],
               sendmail=["/usr/sbin/sendmail-mta", "-Am", "-oi", "-odb", "-f"],
               logs=(),
               expiry_seconds=100,
               reset="rm -f /var/spool/mqueue/* /var/spool/mqueue-client/*")


# -- Haraka (npm) -----------------------------------------------------------------------------

HARAKA_DIR = "/opt/haraka/srv"
HARAKA_FILES = {
    "config/me": HOSTNAME + "\n",
    "config/host_list": HOSTNAME + "\n",
    "config/plugins": "relay\n",
    "config/relay.ini": "[relay]\nacl=true\n",
    "config/relay_acl_allow": "127.0.0.0/8\n",
    "config/smtp.ini": "[main]\nlisten=127.0.0.1:25\nnodes=\ndaemonize=false\n",
    "config/log.ini": "[main]\nlevel=info\n",
    # MX hosts on loopback are our world; a temporary failure is retried once after 5 s
    "config/outbound.ini": "local_mx_ok=true\nenable_tls=false\ntemp_fail_intervals=5s\n",
}


def configure_haraka(root: Path, profile: str) -> None:
    # Haraka's shipped defaults first (the bounce message templates among them), then ours
    shipped = root / "opt/haraka/node_modules/Haraka/config"
    config = root / HARAKA_DIR.lstrip("/") / "config"
    shutil.copytree(shipped, config, dirs_exist_ok=True)
    (config / "smtp.json").unlink(missing_ok=True)     # it would override smtp.ini and relay.ini
    for name, text in HARAKA_FILES.items():
        _write(root, f"{HARAKA_DIR}/{name}", text)


HARAKA = MTA("haraka", configure_haraka,
             start=["sh", "-c", f"mkdir -p {HARAKA_DIR}/queue && rm -rf {HARAKA_DIR}/queue/* && "
                    f"cd {HARAKA_DIR} && (node /opt/haraka/node_modules/.bin/haraka -c {HARAKA_DIR} "
                    ">/var/log/haraka.log 2>&1 & echo $! > /run/haraka.pid)"],
             stop=["sh", "-c", "kill $(cat /run/haraka.pid)"],
             flush=None,
             sendmail=[],
             logs=("/var/log/haraka.log",),
             expiry_seconds=30,
             inject_smtp=True,
             profiles=("fail",))      # Haraka sends no delay warnings


# -- Courier ----------------------------------------------------------------------------------

COURIER_PROFILES = {
    # queuetime: how long a message may stay; warntime: when the delay warning goes out;
    # retryalpha/beta/gamma/maxdelta: the retry schedule (seconds), shortened for both
    "fail": {"queuetime": "40s", "warntime": "1d"},
    "delay": {"queuetime": "1d", "warntime": "10s"},
}


def configure_courier(root: Path, profile: str) -> None:
    for name, value in {**COURIER_PROFILES[profile], "me": HOSTNAME, "defaultdomain": HOSTNAME,
                        "locals": f"{HOSTNAME}\nlocalhost", "retryalpha": "5", "retrybeta": "2",
                        "retrygamma": "10", "retrymaxdelta": "1",
                        # Debian ships "mailer-daemon@" here; this is Courier's upstream default
                        "dsnfrom": f'"Courier mail server at {HOSTNAME}" <@>'}.items():
        _write(root, f"/etc/courier/{name}", value + "\n")
    courierd = root / "etc/courier/courierd"
    courierd.write_text(courierd.read_text().replace("ESMTP_USE_STARTTLS=1", "ESMTP_USE_STARTTLS=0"))


COURIER = MTA("courier", configure_courier,
              start=["sh", "-c", "makealiases; courier start"],
              stop=["courier", "stop"],
              flush=["courier", "flush"],
              sendmail=["/usr/sbin/sendmail", "-oi", "-f"],
              logs=(),
              expiry_seconds=100,
              reset="courier stop >/dev/null 2>&1; rm -rf /var/lib/courier/msgs/* /var/lib/courier/msgq/* "
                    "/var/lib/courier/tmp/*")

MTAS = {m.name: m for m in (POSTFIX, EXIM, OPENSMTPD, SENDMAIL, HARAKA, COURIER)}
