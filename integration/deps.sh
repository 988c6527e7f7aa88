#!/usr/bin/env bash
# Install what pec-milter's build and tests need on Debian 12 (run as root).
# Idempotent: packages already present are skipped by apt.
set -euo pipefail
pkgs=(
  build-essential pkg-config libssl-dev ca-certificates openssl
  libxml2-utils python3 redis-server redis-sentinel
  clamav-daemon clamdscan postfix postfix-ldap
  swaks libnet-ssleay-perl sasl2-bin libsasl2-modules libsasl2-modules-db iproute2
  slapd ldap-utils
  dovecot-lmtpd
  softhsm2 opensc libengine-pkcs11-openssl gnutls-bin
  opendkim opendkim-tools strace sqlite3 curl jq
  m4 liblockfile1 libwrap0 libdb5.3 libldap-2.5-0 libnsl2 libsasl2-2 libssl3 procps
  adduser man-db systemd   # e2e-package: the postinst, man -l, systemd-analyze verify
  vagrant                  # e2e-vagrant: vagrant validate of vagrant/Vagrantfile (no provider: no VM runs)
)
if [ "$(id -u)" -ne 0 ]; then
  echo "integration/deps.sh: not root; skipping apt (need: ${pkgs[*]})" >&2
  exit 0
fi
# Never let a package start a daemon (there is no init here, and the tests
# start their own servers on loopback).
if [ ! -x /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # postfix: no questions, no /etc/postfix/main.cf (tests use their own config dirs)
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string pec.test" | debconf-set-selections
  # slapd: no default database under /etc/ldap (tests run their own slapd.conf instances)
  echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi
# Sendmail for integration/e2e-sendmail.sh: its packages conflict with postfix
# (both provide mail-transport-agent), so they are unpacked, not installed, under
# /opt/sendmail (their libraries are the ordinary packages above).
SM=/opt/sendmail
if [ ! -x $SM/usr/libexec/sendmail/sendmail ]; then
  tmp=$(mktemp -d); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download sendmail-bin sendmail-base sendmail-cf) ||
    { apt-get update -qq && (cd "$tmp" && apt-get download sendmail-bin sendmail-base sendmail-cf); }
  mkdir -p "$SM.new"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$SM.new"; done
  rm -rf "$tmp" "$SM"; mv "$SM.new" "$SM"
fi
