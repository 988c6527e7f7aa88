#!/usr/bin/env bash
# integration/bench/hsm-sign.sh — signatures per second, PEM key vs the same kind of key in
# SoftHSM2 (generated inside the token), for 1, 2 and 4 threads / sessions.
# Each figure: `pec-milter bench-sign` = COUNT whole CMS SignedData signatures (signed
# attributes over a 1 KiB content, RSA-2048, SHA-256) from THREADS threads; for PKCS#11 the
# session pool has as many sessions as threads. No network, no root needed.
# Each figure is the best of REPEAT runs (the machine may be shared).
# Env: PEC_MILTER_BIN (default target/release/pec-milter), COUNT (default 2000), REPEAT (3), KEEP=1.
# Prints a Markdown table (for BENCHMARKS.md) and the machine.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/integration/softhsm.sh"
BIN=${PEC_MILTER_BIN:-$ROOT/target/release/pec-milter}
COUNT=${COUNT:-2000}
REPEAT=${REPEAT:-3}
[ -x "$BIN" ] || { echo "$BIN not found: cargo build --release" >&2; exit 1; }
W=$(mktemp -d /tmp/hsm-bench.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$W"' EXIT

# PEM: the demo identity (init_demo), RSA-2048.
cat > "$W/pem.toml" <<EOC
[signing]
backend = "pem"
key = "$W/demo/provider.key"
cert = "$W/demo/provider.crt"
init_demo = true
[index]
source = "none"
EOC
"$BIN" init-demo --config "$W/pem.toml" >/dev/null 2>&1

# SoftHSM2: a token, an RSA-2048 key generated in it, a certificate from a test CA.
hsm_env "$W/softhsm"
hsm_token bench >/dev/null
hsm_keygen bench >/dev/null
hsm_test_ca "$W/ca" "Bench PEC"
hsm_issue_cert "$W/ca" bench "Bench PEC" pec.bench.test
printf '%s\n' "$HSM_PIN" > "$W/pin"; chmod 600 "$W/pin"
for k in 1 2 4; do
  cat > "$W/hsm-$k.toml" <<EOC
[signing]
backend = "pkcs11"
[signing.pkcs11]
module = "$HSM_MODULE"
token_label = "bench"
key_label = "$HSM_KEY_LABEL"
key_id = "$HSM_KEY_ID"
pin_file = "$W/pin"
pool_size = $k
EOC
done
"$BIN" hsm-check --config "$W/hsm-1.toml" >/dev/null

# best CONFIG THREADS: the highest signatures/s of REPEAT runs.
best() {
  local i
  for ((i = 0; i < REPEAT; i++)); do
    "$BIN" bench-sign --config "$1" --threads "$2" --count "$COUNT" | sed -n 's/.*per_second=\([0-9.]*\).*/\1/p'
  done | sort -g | tail -1
}
echo "| Key | threads (PKCS#11: sessions) | signatures/s |"
echo "|---|---:|---:|"
for k in 1 2 4; do
  p=$(best "$W/pem.toml" "$k")
  echo "| PEM (OpenSSL in process) | $k | $p |"
done
for k in 1 2 4; do
  h=$(best "$W/hsm-$k.toml" "$k")
  echo "| SoftHSM2 2.6 (PKCS#11) | $k | $h |"
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(free -g | awk '/Mem:/ {print $2}') GiB; $(openssl version | cut -d' ' -f1-2); $("$BIN" --version)"
