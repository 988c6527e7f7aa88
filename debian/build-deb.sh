#!/usr/bin/env bash
# debian/build-deb.sh [CARGO-DEB ARGS...] — build the Debian package,
# target/debian/pec-milter_<version>-1_<arch>.deb (what it holds: [package.metadata.deb] in
# Cargo.toml; README, "Install from the Debian package").
#
# cargo deb packages files that must exist before it runs, and two of them are made from the
# sources here, under target/deb-assets/:
#   pec-milter.8, pec-milter.toml.5   `pec-milter man --out DIR` (the command line's grammar,
#                                     and the annotated milter-conf/pec-milter.toml)
#   pec-milter.toml                   the conffile /etc/pec-milter/pec-milter.toml:
#                                     milter-conf/pec-milter.toml with [spool] dir and
#                                     [delivery] outbox under /var/spool/pec-milter and [log]
#                                     dir under /var/log/pec-milter (FHS: data waiting to be
#                                     sent is spool, the message log is a log); every other
#                                     value as shipped
# then runs `cargo deb --no-build` on the release binary built here. Needs cargo-deb
# (`cargo install cargo-deb --locked`). CARGO_NET_OFFLINE=true builds offline.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "cargo-deb not found: cargo install cargo-deb --locked" >&2; exit 2; }

cargo build --release --locked
BIN=${CARGO_TARGET_DIR:-target}/release/pec-milter
A=target/deb-assets
rm -rf "$A"
mkdir -p "$A"
"$BIN" man --out "$A" >/dev/null

{
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
} > "$A/pec-milter.toml"
# the three moves happened (a change of milter-conf/pec-milter.toml must not silently undo
# them), nothing else moved, and the result is a configuration pec-milter accepts
for want in 'dir = "/var/spool/pec-milter"' 'outbox = "/var/spool/pec-milter/outbox"' \
            'dir = "/var/log/pec-milter"'; do
  grep -qxF "$want" "$A/pec-milter.toml" || { echo "build-deb: no line '$want' in $A/pec-milter.toml" >&2; exit 1; }
done
if grep -nE '/var/lib/pec-milter/(spool|outbox|log)\b' "$A/pec-milter.toml"; then
  echo "build-deb: paths left under /var/lib/pec-milter (above)" >&2; exit 1
fi
"$BIN" check-config --config "$A/pec-milter.toml" >/dev/null

cargo deb --no-build "$@"
