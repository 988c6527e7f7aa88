#!/usr/bin/env bash
# debian/build-deb.sh [CARGO-DEB ARGS...] — build the Debian package,
# target/debian/pec-milter_<version>-1_<arch>.deb (what it holds: [package.metadata.deb] in
# Cargo.toml; README, "Install from the Debian package").
#
# cargo deb packages files that must exist before it runs, and two of them are made from the
# sources here, under target/deb-assets/:
#   pec-milter.8, pec-milter.toml.5   `pec-milter man --out DIR` (the command line's grammar,
#                                     and the annotated milter-conf/pec-milter.toml)
#   pec-milter.toml                   the conffile /etc/pec-milter/pec-milter.toml
#                                     (debian/conffile.sh): milter-conf/pec-milter.toml with
#                                     [spool] dir and [delivery] outbox under
#                                     /var/spool/pec-milter and [log] dir under
#                                     /var/log/pec-milter (FHS: data waiting to be sent is
#                                     spool, the message log is a log); every other value as
#                                     shipped
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

# the conffile (debian/conffile.sh: the three moves, checked), and it is a configuration
# pec-milter accepts
bash debian/conffile.sh > "$A/pec-milter.toml"
"$BIN" check-config --config "$A/pec-milter.toml" >/dev/null

cargo deb --no-build "$@"
