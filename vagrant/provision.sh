#!/usr/bin/env bash
# Provision one provider of the QA rig: packages (integration/deps.sh), a
# Rust toolchain, a release build, and a Postfix + pec-milter + Redis +
# clamd instance from integration/lib.sh, left running.
# usage: provision.sh NAME IP DOMAIN ORG
set -euo pipefail
name=$1 ip=$2 domain=$3 org=$4
cd /pec-milter
bash integration/deps.sh
if ! command -v cargo >/dev/null; then
  apt-get install -y --no-install-recommends curl
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
# shellcheck disable=SC1091
. "$HOME/.cargo/env"
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
