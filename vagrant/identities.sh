#!/usr/bin/env bash
# vagrant/identities.sh [DIR] — the providers' demo identities and their index, made on the
# host before the VMs are provisioned (the Vagrantfile runs it as a trigger before `vagrant
# up`, `provision` and `reload`). Each provider of providers.env gets its own demo CA and
# provider certificate from `pec-milter init-demo` (DIR/<P>/provider.key, provider.crt,
# ca.pem), and DIR/igpec.ldif lists every provider (`pec-milter index-entry`; mailReceipt
# posta-certificata@<domain>, as init-demo's own index says), so that each provider's
# provision.sh finds its key, every CA to trust and an index naming all of them. DIR defaults
# to vagrant/pki/ (git-ignored; the rsync-synced folder takes it into the VMs).
#
# Made here, not in the VMs, because each VM needs the other's certificate before either
# starts, and an rsync-synced folder only goes from the host to the guests. Demo keys: never
# for real PEC traffic. Idempotent: an identity that exists is kept (delete DIR/<P> for a new
# one, then `vagrant provision`); the index is written again each time.
#
# The pec-milter it runs: $PEC_MILTER_BIN, else the one in the newest
# target/debian/pec-milter_*.deb (what the VMs install; needs dpkg-deb), else
# ${CARGO_TARGET_DIR:-target}/release/pec-milter (debian/build-deb.sh leaves it there), else
# target/debug/pec-milter, else pec-milter on the PATH.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
# shellcheck source=vagrant/providers.env
. "$HERE/providers.env"
OUT=${1:-${PEC_PKI:-$HERE/pki}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

find_bin() {
  local deb t
  if [ -n "${PEC_MILTER_BIN:-}" ]; then printf '%s' "$PEC_MILTER_BIN"; return; fi
  t=${CARGO_TARGET_DIR:-$SRC/target}
  deb=$(ls -t "$t"/debian/pec-milter_*.deb 2>/dev/null | head -n 1 || true)
  if [ -n "$deb" ] && command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$deb" "$tmp/deb" && [ -x "$tmp/deb/usr/sbin/pec-milter" ] &&
      { printf '%s' "$tmp/deb/usr/sbin/pec-milter"; return; }
  fi
  for b in "$t/release/pec-milter" "$t/debug/pec-milter"; do
    [ -x "$b" ] && { printf '%s' "$b"; return; }
  done
  command -v pec-milter || true
}
BIN=$(find_bin)
if [ -z "$BIN" ] || ! "$BIN" index-entry --help >/dev/null 2>&1; then
  echo "identities.sh: no pec-milter to run on this host: build the package first" \
       "(debian/build-deb.sh), or set PEC_MILTER_BIN" >&2
  exit 1
fi

# one run at a time (the trigger fires once per machine)
if command -v flock >/dev/null; then exec 9>"$OUT/.lock"; flock 9; fi

for P in $PROVIDERS; do
  v=${P}_NAME; name=${!v}
  v=${P}_DOMAIN; dom=${!v}
  D=$OUT/$P
  if [ -s "$D/provider.key" ] && [ -s "$D/provider.crt" ] && [ -s "$D/ca.pem" ]; then
    echo "identities.sh: $P ($dom): kept $D"
    continue
  fi
  mkdir -p "$D"
  rm -f "$D/provider.key" "$D/provider.crt" "$D/ca.pem"
  # the identity's own configuration: [provider] and [signing] as the VM's, the files here;
  # no index (init-demo would otherwise write a one-provider index at its default path)
  cat > "$D/id.toml" <<EOF
# written by vagrant/identities.sh: $P's demo identity (init-demo)
[provider]
name = "$name"
domain = "$dom"
domains = ["$dom"]

[signing]
key = "$D/provider.key"
cert = "$D/provider.crt"

[index]
source = "none"
EOF
  NO_COLOR=1 "$BIN" init-demo --config "$D/id.toml" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  echo "identities.sh: $P ($dom): demo CA and provider certificate in $D"
done

# the providers' index: the o=postacert root entry (slapd-loadable too), then one entry each
{
  printf 'dn: o=postacert\nobjectClass: top\nobjectClass: organization\no: postacert\n'
  printf 'description: Base root for the PEC providers directory\n\n'
  for P in $PROVIDERS; do
    v=${P}_NAME; name=${!v}
    v=${P}_DOMAIN; dom=${!v}
    "$BIN" index-entry --cert "$OUT/$P/provider.crt" --name "$name" --domains "$dom" \
      --receipt "posta-certificata@$dom"
  done
} > "$OUT/igpec.ldif.new"
mv "$OUT/igpec.ldif.new" "$OUT/igpec.ldif"
echo "identities.sh: the providers' index $OUT/igpec.ldif lists $PROVIDERS"
