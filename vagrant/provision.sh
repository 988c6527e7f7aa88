#!/usr/bin/env bash
# Provision one provider of the QA rig: packages (integration/deps.sh), a
# Rust toolchain, a release build, and a Postfix + pec-milter + Redis +
# clamd instance from integration/lib.sh, left running.
# usage: provision.sh NAME IP DOMAIN ORG
set -euo pipefail
name=$1 ip=$2 domain=$3 org=$4
cd /pec-milter
bash integration/deps.sh
# Rust >= 1.95 is needed (Debian 12's cargo is older): install it with
# rustup in the box image, or build on the host and copy the binary in.
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
command -v cargo >/dev/null || { echo "provision: no Rust toolchain (>= 1.95) in the box" >&2; exit 1; }
cargo build --release --locked
install -m 755 target/release/pec-milter /usr/local/bin/pec-milter
DIR=/var/lib/pec-qa
mkdir -p "$DIR"
# shellcheck disable=SC1091
. integration/lib.sh
export PEC_MILTER_BIN=/usr/local/bin/pec-milter
pf_instance "$DIR/pf" DOMAINS="$domain" INBOUND="$ip:25"
pf_up "$DIR/pf"
redis_up "$DIR/redis" 6379
clamd_up "$DIR/clamd" 3310
write_config "$DIR" redis
pec_milter_up "$DIR" "$DIR/pec-milter.toml"
echo "provider $name ($org, $domain) is up on $ip"
