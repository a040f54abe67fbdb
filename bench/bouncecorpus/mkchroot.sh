#!/bin/sh
# mkchroot.sh MTA: build (once) the Debian bookworm chroot that runs one MTA.
#
# The base system is made once with debootstrap in $CACHE/base; each MTA gets its own copy
# ($CACHE/root-<mta>) with its packages installed, because Debian's MTAs conflict with each
# other. Nothing is installed on the host but debootstrap; no daemon is started here (a
# policy-rc.d forbids it). Re-running with an existing root only installs packages that were
# added to the list since.
#
# CACHE defaults to /var/tmp/mailrelay-bouncecorpus; MIRROR to http://deb.debian.org/debian.
set -eu
MTA=${1:?usage: mkchroot.sh postfix|exim|opensmtpd|sendmail|courier|haraka|base}
CACHE=${CACHE:-/var/tmp/mailrelay-bouncecorpus}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=$CACHE/base
mkdir -p "$CACHE"

if [ ! -e "$BASE/.complete" ]; then
    command -v debootstrap >/dev/null || apt-get install -y debootstrap
    rm -rf "$BASE"
    debootstrap --variant=minbase --include=iproute2,procps,netbase,ca-certificates,less \
        bookworm "$BASE" "$MIRROR"
    printf '#!/bin/sh\nexit 101\n' > "$BASE/usr/sbin/policy-rc.d"
    chmod +x "$BASE/usr/sbin/policy-rc.d"
    rm -f "$BASE/var/cache/apt/archives/"*.deb
    touch "$BASE/.complete"
fi
[ "$MTA" = base ] && exit 0

case $MTA in
    postfix)   PKGS="postfix vacation dovecot-core dovecot-sieve" ;;
    exim)      PKGS="exim4-daemon-light" ;;
    opensmtpd) PKGS="opensmtpd" ;;
    sendmail)  PKGS="sendmail-bin sendmail-cf m4 make" ;;
    haraka)    PKGS="nodejs" ;;
    courier)   PKGS="courier-mta" ;;
    *) echo "unknown MTA $MTA" >&2; exit 2 ;;
esac

ROOT=$CACHE/root-$MTA
if [ -e "$ROOT/.complete" ]; then
    MISSING=""
    for pkg in $PKGS; do
        chroot "$ROOT" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" \
            || MISSING="$MISSING $pkg"
    done
    [ -z "$MISSING" ] && exit 0
    PKGS=$MISSING
else
    rm -rf "$ROOT"
    cp -a "$BASE" "$ROOT"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"   # the host's, for apt; run.py writes the test one
mount --bind /proc "$ROOT/proc" 2>/dev/null || true
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
printf 'mta.relay.test\n' > "$ROOT/etc/mailname"
printf 'postfix postfix/main_mailer_type select No configuration\n' > "$ROOT/tmp/debconf"
chroot "$ROOT" sh -c 'debconf-set-selections /tmp/debconf; apt-get update -q'
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PKGS
if [ "$MTA" = haraka ] && [ ! -e "$ROOT/opt/haraka/node_modules/Haraka" ]; then
    # the host's npm (it trusts the host's CA set) installs Haraka into the chroot, whose
    # Debian nodejs (18) runs it: Haraka 3.0.4 is the last release that supports node 18
    mkdir -p "$ROOT/opt/haraka"
    npm install --prefix "$ROOT/opt/haraka" --no-audit --no-fund --omit=optional Haraka@3.0.4
fi
rm -f "$ROOT/var/cache/apt/archives/"*.deb
touch "$ROOT/.complete"
