#!/usr/bin/env bash
# debian/conffile.sh — print the package's conffile, /etc/pec-milter/pec-milter.toml, on stdout:
# milter-conf/pec-milter.toml with [spool] dir and [delivery] outbox under /var/spool/pec-milter
# and [log] dir under /var/log/pec-milter (FHS: data waiting to be sent is spool, the message
# log is a log); every other value as shipped. debian/build-deb.sh packages its output;
# vagrant/provision.sh (dry run, with no .deb at hand) starts from it. Exits 1, printing
# nothing, when a move did not happen (a change of milter-conf/pec-milter.toml must not
# silently undo one) or something else moved.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(
  cat <<'HEAD'
# /etc/pec-milter/pec-milter.toml as the Debian package installs it (a conffile: your
# changes are kept across upgrades). It is the annotated milter-conf/pec-milter.toml
# (/usr/share/doc/pec-milter/milter-conf/) with the spool and the outbox under
# /var/spool/pec-milter and the legal message log under /var/log/pec-milter; the systemd
# unit lets the daemon write only there, under /var/lib/pec-milter and /run/pec-milter
# (a drop-in adds more: see the unit). The daemon runs as the user pec-milter: a key, PIN
# or password file named here must be readable by it. Every key: pec-milter.toml(5).
#
HEAD
  sed -e 's|/var/lib/pec-milter/spool\b|/var/spool/pec-milter|g' \
      -e 's|/var/lib/pec-milter/outbox\b|/var/spool/pec-milter/outbox|g' \
      -e 's|/var/lib/pec-milter/log\b|/var/log/pec-milter|g' \
      milter-conf/pec-milter.toml
)
for want in 'dir = "/var/spool/pec-milter"' 'outbox = "/var/spool/pec-milter/outbox"' \
            'dir = "/var/log/pec-milter"'; do
  grep -qxF "$want" <<<"$out" || { echo "conffile: no line '$want'" >&2; exit 1; }
done
if grep -nE '/var/lib/pec-milter/(spool|outbox|log)\b' <<<"$out" >&2; then
  echo "conffile: paths left under /var/lib/pec-milter (above)" >&2; exit 1
fi
printf '%s\n' "$out"
