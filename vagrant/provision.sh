#!/usr/bin/env bash
# vagrant/provision.sh NAME — make this VM the PEC provider NAME of vagrant/providers.env (A, B):
# pec-milter from the Debian package built on the host, its MTA (Postfix or Sendmail) and clamd,
# configured from the files the tests use, left running. Run as root by the Vagrantfile
# (vagrant up / vagrant provision); idempotent.
#
#   pec-milter  the .deb in /pec-milter-deb (the host's target/debian/, rsync-synced), installed
#               with apt; with PEC_BUILD_IN_BOX=1 and no .deb, built here first by the same
#               debian/build-deb.sh (rustup, `cargo install cargo-deb --locked`: slow, the
#               fallback). Its conffile /etc/pec-milter/pec-milter.toml is written from the
#               package's own copy (taken from the .deb) with only the per-provider values set
#               (set_provider_values below): [provider] name, domain, domains; [index] ldif;
#               [reception] trust; [metrics] listen. The identity (vagrant/identities.sh, on the
#               host) goes where the conffile's [signing] says, /var/lib/pec-milter/demo/.
#   Postfix     (MTA=postfix) /etc/postfix/main.cf: Debian's main.cf.debian and main.cf.tls (what
#               the package's postinst starts from), this provider's own lines (site_main_cf),
#               then milter-conf/postfix/main.cf.snippet as shipped, with
#               virtual_mailbox_domains = DOMAIN; master.cf: Debian's master.cf.dist with its
#               smtp inet entry replaced by the snippet's, and the snippet's other entries;
#               pec-sender-login.regexp as shipped; Cyrus SASL (sasldb) for the holders.
#   Sendmail    (MTA=sendmail) /etc/mail/sendmail.mc: Debian's prototype (sendmail-cf's
#               cf/debian/sendmail.mc) with its MTA and MSA daemons on every address (the
#               prototype's own comment: remove the Addr= clauses) and
#               milter-conf/sendmail/pec-milter.mc.snippet inserted as shipped before the mailers;
#               the mailertable and relay-domains lines the snippet asks for; STARTTLS files in
#               /etc/mail/tls/ (self-signed); /etc/sasl2/Sendmail.conf as shipped; the holders
#               in /etc/sasldb2 (root, 0600).
#   Next hops   the other providers by [IP]:25 literals (Postfix transport_maps, Sendmail
#               mailertable esmtp:[IP]); any other domain is refused (error:): nothing leaves
#               the rig, no DNS is asked.
#   clamd       Debian's clamav-daemon, also on tcp 127.0.0.1:3310 (the conffile's [clamd]
#               address) with the size limits the conffile's comment asks for; signatures from
#               freshclam, else (no download) a local EICAR-only database.
#
# Dry run (the test machine, no VM: integration/e2e-vagrant.sh):
#   PROVISION_ROOT=/tmp/x DRY_RUN=1 bash vagrant/provision.sh A
# installs and starts nothing: it writes every file it would write under PROVISION_ROOT (the
# same text; paths inside them that name a file written here are under PROVISION_ROOT too,
# and Postfix's queue and data directories), then checks them: `pec-milter check-config`,
# `postfix -c DIR check`, Sendmail's m4 build of the .mc (on a copy of sendmail-cf whose
# absolute paths are moved under PROVISION_ROOT). Env for it: PEC_MILTER_BIN (else
# /usr/sbin/pec-milter, pec-milter on the PATH, target/{release,debug}/pec-milter),
# SENDMAIL_SHARE (default /usr/share/sendmail; the test machine: /opt/sendmail/usr/share/sendmail),
# MAKEMAP (default makemap on the PATH), PEC_DEB (a .deb whose conffile to start from; else
# debian/conffile.sh prints it), PEC_PKI (default vagrant/pki).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/.." && pwd)
# shellcheck source=vagrant/providers.env
. "$HERE/providers.env"

usage() { echo "usage: [PROVISION_ROOT=DIR DRY_RUN=1] provision.sh NAME   (NAME: one of $PROVIDERS)" >&2; exit 2; }
[ $# = 1 ] || usage
NAME=${1^^}
case " $PROVIDERS " in *" $NAME "*) ;; *) usage ;; esac

R=${PROVISION_ROOT:-}
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ] && [ -z "$R" ]; then echo "provision.sh: DRY_RUN=1 needs PROVISION_ROOT" >&2; exit 2; fi
if [ "$DRY" != 1 ] && [ -n "$R" ]; then echo "provision.sh: PROVISION_ROOT is for DRY_RUN=1 only" >&2; exit 2; fi
if [ -n "$R" ]; then mkdir -p "$R"; R=$(cd "$R" && pwd); fi
PKI=${PEC_PKI:-$HERE/pki}
SM_SHARE=${SENDMAIL_SHARE:-/usr/share/sendmail}

# ------------------------------------------------------------------ this provider's values
pv() { local v="${1}_$2"; printf '%s' "${!v}"; }   # pv P KEY: <P>_<KEY> of providers.env
MTA=$(pv "$NAME" MTA) PNAME=$(pv "$NAME" NAME) DOMAIN=$(pv "$NAME" DOMAIN)
HOST=$(pv "$NAME" HOST) IP=$(pv "$NAME" IP) HOLDERS=$(pv "$NAME" HOLDERS)
PEERS=
for p in $PROVIDERS; do [ "$p" = "$NAME" ] || PEERS="$PEERS $p"; done
RECEIPTS=posta-certificata@$DOMAIN     # the index's mailReceipt (identities.sh)

log() { printf '==> provision %s: %s\n' "$NAME" "$*"; }
die() { printf 'provision %s: %s\n' "$NAME" "$*" >&2; exit 1; }
# own U:G MODE PATH...: owner and mode; a dry run sets only the mode (the owner may not exist)
own() {
  local ug=$1 mode=$2; shift 2
  chmod "$mode" "$@"
  if [ "$DRY" != 1 ] || getent passwd "${ug%%:*}" >/dev/null; then chown "$ug" "$@"; fi
}
# toml_str S: S as a TOML basic string
toml_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
# toml_set FILE SECTION KEY VALUE: the first uncommented `KEY = ...` line of [SECTION] becomes
# `KEY = VALUE` (VALUE a TOML value as written); fails when [SECTION] has no such line.
toml_set() {
  local f=$1 sec=$2 key=$3 val=$4 tmp
  tmp=$(mktemp)
  if ! awk -v sec="[$sec]" -v key="$key" -v val="$val" '
      /^\[/ { cur = $0; sub(/[ \t]*(#.*)?$/, "", cur) }
      cur == sec && !done && $0 ~ "^" key "[ \t]*=" { print key " = " val; done = 1; next }
      { print }
      END { exit !done }' "$f" > "$tmp"; then
    rm -f "$tmp"; die "toml_set: no \`$key =\` line in [$sec] of $f"
  fi
  cat "$tmp" > "$f"; rm -f "$tmp"
}
# conf_line FILE KEY VALUE: "KEY VALUE" in a clamd.conf-style file (replaced, else appended)
conf_line() {
  if grep -qE "^#?$2([[:space:]]|$)" "$1"; then
    sed -i -E "0,/^#?$2([[:space:]]|\$)/s|^#?$2([[:space:]].*)?\$|$2 $3|" "$1"
  else
    printf '%s %s\n' "$2" "$3" >> "$1"
  fi
}
# ensure_line FILE LINE: LINE in FILE once
ensure_line() { touch "$1"; grep -qxF -- "$2" "$1" || printf '%s\n' "$2" >> "$1"; }

pec_bin() {
  local b
  for b in "${PEC_MILTER_BIN:-}" /usr/sbin/pec-milter "$(command -v pec-milter || true)" \
           "$SRC/target/release/pec-milter" "$SRC/target/debug/pec-milter"; do
    [ -n "$b" ] && [ -x "$b" ] && { printf '%s' "$b"; return 0; }
  done
  return 1
}

# ------------------------------------------------------------------ packages (VM only)
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    install -y --no-install-recommends "$@"
}
packages() {
  local pkgs=(ca-certificates openssl curl swaks libnet-ssleay-perl sasl2-bin libsasl2-modules
              clamav-daemon clamav-freshclam rsync)
  case $MTA in
    # "No configuration": the postinst writes no main.cf; site_main_cf and the snippet do
    postfix) pkgs+=(postfix)
             echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections ;;
    sendmail) pkgs+=(sendmail-bin sendmail-cf m4 make) ;;
    *) die "unknown MTA $MTA" ;;
  esac
  apt-get update -qq
  apt_install "${pkgs[@]}"
}

# newest_deb DIR: the newest pec-milter_*.deb in DIR (by version), or nothing
newest_deb() {
  local d
  d=$(ls "$1"/pec-milter_*.deb 2>/dev/null | while read -r f; do
        printf '%s %s\n' "$(dpkg-deb -f "$f" Version)" "$f"; done |
      sort -V | tail -n 1 | cut -d' ' -f2-) || true
  printf '%s' "$d"
}
# build_in_box: the fallback without a .deb from the host: rustup, cargo-deb, debian/build-deb.sh
# on a copy of the sources (the synced folder is the host's); prints the .deb
build_in_box() {
  local b=/root/pec-milter-build
  apt_install build-essential pkg-config libssl-dev >&2
  if [ ! -x /root/.cargo/bin/cargo ]; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
  fi
  export PATH=/root/.cargo/bin:$PATH
  command -v cargo-deb >/dev/null || cargo install cargo-deb --locked >&2
  mkdir -p "$b"
  rsync -a --delete --exclude /target --exclude /.git --exclude /vagrant/pki "$SRC"/ "$b"/ >&2
  (cd "$b" && bash debian/build-deb.sh >&2)
  newest_deb "$b/target/debian"
}
install_pec_milter() {
  DEB=$(newest_deb "${PEC_DEB_DIR:-/pec-milter-deb}")
  if [ -z "$DEB" ]; then
    [ "${PEC_BUILD_IN_BOX:-0}" = 1 ] ||
      die "no pec-milter_*.deb in ${PEC_DEB_DIR:-/pec-milter-deb}: run debian/build-deb.sh on the host (then vagrant reload --provision), or PEC_BUILD_IN_BOX=1 vagrant provision"
    log "no .deb from the host: building it in the box (PEC_BUILD_IN_BOX=1)"
    DEB=$(build_in_box)
    [ -n "$DEB" ] || die "the build in the box made no .deb"
  fi
  log "installing $(basename "$DEB")"
  cp "$DEB" /tmp/pec-milter.deb
  # --reinstall: a .deb rebuilt with the same version replaces the installed one
  apt_install --reinstall /tmp/pec-milter.deb
}

# ------------------------------------------------------------------ pec-milter
# base_conffile: the package's conffile as shipped (from the .deb, else debian/conffile.sh)
base_conffile() {
  local deb=${DEB:-${PEC_DEB:-}}
  if [ -n "$deb" ]; then
    dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./etc/pec-milter/pec-milter.toml
  else
    bash "$SRC/debian/conffile.sh"
  fi
}
# set_provider_values FILE: the per-provider values, the only change to the package's conffile
set_provider_values() {
  local f=$1 p trust=
  toml_set "$f" provider name "$(toml_str "$PNAME")"
  toml_set "$f" provider domain "$(toml_str "$DOMAIN")"
  toml_set "$f" provider domains "[$(toml_str "$DOMAIN")]"
  # the providers' index: every provider of the rig (identities.sh)
  toml_set "$f" index ldif "$(toml_str "$R/etc/pec-milter/igpec.ldif")"
  # trust anchors: every provider's demo CA, ours included
  for p in $PROVIDERS; do trust="$trust${trust:+, }$(toml_str "$R/etc/pec-milter/trust/$p-ca.pem")"; done
  toml_set "$f" reception trust "[$trust]"
  toml_set "$f" metrics listen "$(toml_str "$METRICS_LISTEN")"
}
pec_milter_files() {
  local p u E=$R/etc/pec-milter L=$R/var/lib/pec-milter
  for p in $PROVIDERS; do
    [ -s "$PKI/$p/provider.crt" ] && [ -s "$PKI/$p/ca.pem" ] ||
      die "no identity of $p in $PKI: run vagrant/identities.sh on the host (the Vagrantfile's trigger does, before up/provision/reload)"
  done
  [ -s "$PKI/$NAME/provider.key" ] && [ -s "$PKI/igpec.ldif" ] || die "no key of $NAME or no igpec.ldif in $PKI"
  mkdir -p "$E/trust" "$L/demo" "$L/mail"
  # the identity where the conffile's [signing] key / cert say (init-demo keeps it: it exists)
  install -m 600 "$PKI/$NAME/provider.key" "$L/demo/provider.key"
  install -m 644 "$PKI/$NAME/provider.crt" "$L/demo/provider.crt"
  install -m 644 "$PKI/$NAME/ca.pem" "$L/demo/ca.pem"
  own pec-milter:pec-milter 0750 "$L/demo"
  own pec-milter:pec-milter 0600 "$L/demo/provider.key"
  own pec-milter:pec-milter 0644 "$L/demo/provider.crt" "$L/demo/ca.pem"
  for p in $PROVIDERS; do install -m 644 "$PKI/$p/ca.pem" "$E/trust/$p-ca.pem"; done
  install -m 644 "$PKI/igpec.ldif" "$E/igpec.ldif"
  base_conffile > "$E/pec-milter.toml.new" || die "cannot read the package's conffile"
  set_provider_values "$E/pec-milter.toml.new"
  chmod 644 "$E/pec-milter.toml.new"
  mv "$E/pec-milter.toml.new" "$E/pec-milter.toml"
  # the Maildirs of the delivery point ([delivery] maildir/<domain>/<user>/; one that does not
  # exist gets an errore-consegna): the holders and the receipts' address
  for u in $(holder_addrs) "$RECEIPTS"; do
    mkdir -p "$L/mail/$DOMAIN/${u%@*}"
    own pec-milter:pec-milter 0750 "$L/mail" "$L/mail/$DOMAIN" "$L/mail/$DOMAIN/${u%@*}"
  done
}
holder_addrs() { local h; for h in $HOLDERS; do printf '%s\n' "${h%%:*}"; done; }

# ------------------------------------------------------------------ clamd
clamd_files() {
  local f=$R/etc/clamav/clamd.conf
  if [ -n "$R" ]; then
    [ -f /etc/clamav/clamd.conf ] || { log "no /etc/clamav/clamd.conf here: clamd.conf skipped"; return 0; }
    mkdir -p "$R/etc/clamav"; cp /etc/clamav/clamd.conf "$f"
  fi
  # the conffile's [clamd] address, tcp:127.0.0.1:3310 (Debian's clamd has only its unix
  # socket), and the limits its comment asks for (a message over StreamMaxLength gets no verdict)
  conf_line "$f" TCPSocket 3310
  conf_line "$f" TCPAddr 127.0.0.1
  conf_line "$f" StreamMaxLength 100M
  conf_line "$f" MaxScanSize 100M
  conf_line "$f" MaxFileSize 100M
}
clamd_signatures() {
  local db=/var/lib/clamav
  systemctl stop clamav-freshclam || true
  if ! ls $db/main.c[vl]d >/dev/null 2>&1; then
    log "freshclam (the official signatures, a few minutes)"
    timeout 600 freshclam --quiet || log "freshclam failed"
  fi
  if ! ls $db/main.c[vl]d >/dev/null 2>&1 || ! ls $db/daily.c[vl]d >/dev/null 2>&1; then
    # no download: EICAR only, enough for the demo's virus test; clamav-daemon.service wants
    # the official files, a drop-in lifts that
    log "no official signatures: a local EICAR-only database ($db/pec-rig-eicar.ndb)"
    printf 'PEC.Rig.EICAR:0:*:%s\n' "$(printf '%s' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE' | od -An -tx1 | tr -d ' \n')" \
      > $db/pec-rig-eicar.ndb
    chown clamav:clamav $db/pec-rig-eicar.ndb
    mkdir -p /etc/systemd/system/clamav-daemon.service.d
    printf '[Unit]\nConditionPathExistsGlob=\n' > /etc/systemd/system/clamav-daemon.service.d/pec-rig.conf
    systemctl daemon-reload
  fi
  systemctl enable --now clamav-freshclam || true
  systemctl enable clamav-daemon
  systemctl restart clamav-daemon
}

# ------------------------------------------------------------------ Postfix
# site_main_cf: this provider's own main.cf lines (an admin's: names, networks, next hops,
# SASL), never a setting of main.cf.snippet
site_main_cf() {
  local E=$R/etc/postfix
  cat <<EOF

# ---- provider $NAME of the Vagrant rig (vagrant/provision.sh, values from vagrant/providers.env)
myhostname = $HOST
mydomain = $DOMAIN
myorigin = \$myhostname
# the PEC domain is not here: its mailboxes are pec-milter's delivery point (virtual_mailbox_domains)
mydestination = \$myhostname, localhost.localdomain, localhost
mynetworks = 127.0.0.0/8
inet_interfaces = all
inet_protocols = ipv4
alias_maps = hash:$R/etc/aliases
alias_database = hash:$R/etc/aliases
recipient_delimiter = +
# the other providers' MX by address ([IP]:25 in transport); nothing else leaves the rig, no DNS
transport_maps = texthash:$E/transport
default_transport = error:5.7.1 only the providers of the Vagrant rig are reachable
relay_transport = error:5.7.1 only the providers of the Vagrant rig are reachable
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# the submission service's SASL: Cyrus, $E/sasl/smtpd.conf (sasldb $R/etc/sasldb2); the
# logins are whole addresses (no realm appended)
cyrus_sasl_config_path = $E/sasl
smtpd_sasl_local_domain =
EOF
  if [ -n "$R" ]; then
    cat <<EOF
# dry run only: the queue and data directories under PROVISION_ROOT
queue_directory = $R/var/spool/postfix
data_directory = $R/var/lib/postfix
EOF
  fi
}
postfix_files() {
  local E=$R/etc/postfix p shipped=$SRC/milter-conf/postfix h u
  mkdir -p "$E/sasl"
  { cat /usr/share/postfix/main.cf.debian; echo; cat /usr/share/postfix/main.cf.tls
    site_main_cf; echo; cat "$shipped/main.cf.snippet"; } > "$E/main.cf"
  # the snippet's own instruction: its domain replaced by ours
  postconf -c "$E" -e "virtual_mailbox_domains = $DOMAIN"
  # master.cf: the snippet's smtp entry replaces Debian's, its other entries are added
  cp /usr/share/postfix/master.cf.dist "$E/master.cf"
  postconf -c "$E" -M -X smtp/inet
  { echo; cat "$shipped/master.cf.snippet"; } >> "$E/master.cf"
  install -m 644 "$shipped/pec-sender-login.regexp" "$E/pec-sender-login.regexp"
  for p in $PEERS; do printf '%s\tsmtp:[%s]:25\n' "$(pv "$p" DOMAIN)" "$(pv "$p" IP)"; done > "$E/transport"
  printf 'postmaster: root\n' > "$R/etc/aliases.new"
  [ -e "$R/etc/aliases" ] || mv "$R/etc/aliases.new" "$R/etc/aliases"
  rm -f "$R/etc/aliases.new"
  postalias -c "$E" "hash:$R/etc/aliases"
  cat > "$E/sasl/smtpd.conf" <<EOF
pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: $R/etc/sasldb2
mech_list: PLAIN LOGIN
EOF
  sasl_users "$R/etc/sasldb2"
  # smtpd (user postfix, not chrooted) reads it
  own root:postfix 0640 "$R/etc/sasldb2"
  if [ -n "$R" ]; then
    mkdir -p "$R/var/spool/postfix" "$R/var/lib/postfix"
    own postfix:postfix 0700 "$R/var/lib/postfix"
  fi
}
# sasl_users DB: the holders in the Cyrus sasldb DB (login = the address, realm = its domain)
sasl_users() {
  local h u
  for h in $HOLDERS; do
    u=${h%%:*}
    printf '%s' "${h#*:}" | saslpasswd2 -f "$1" -p -c -u "${u#*@}" "${u%@*}"
  done
}
postfix_check() {
  # postfix prints its errors on a tty only: script(1) gives it one
  script -qec "postfix -c $R/etc/postfix check" /dev/null || die "postfix check failed"
}
postfix_start() {
  newaliases
  systemctl enable postfix
  systemctl restart postfix
}

# ------------------------------------------------------------------ Sendmail
sendmail_files() {
  local E=$R/etc/mail proto=$SM_SHARE/cf/debian/sendmail.mc snippet=$SRC/milter-conf/sendmail/pec-milter.mc.snippet p
  [ -f "$proto" ] || die "no $proto (sendmail-cf; SENDMAIL_SHARE)"
  mkdir -p "$E/m4" "$E/tls" "$R/etc/sasl2"
  # the site's sendmail.mc: Debian's prototype, its MTA and MSA daemons on every address (the
  # prototype: "Remove \`, Addr=' clauses to receive from any interface"), the shipped snippet
  # inserted before the mailers (the snippet: "after its FEATURE() lines and before its
  # MAILER() lines")
  awk -v snip="$snippet" -v host="$HOST" '
    /^DAEMON_OPTIONS\(`Family=inet, +Name=(MTA|MSP)-v4,.*, Addr=127\.0\.0\.1/ { sub(/, Addr=127\.0\.0\.1/, ""); daemons++ }
    /^dnl # Default Mailer setup/ {
      print "dnl # ---- provider of the Vagrant rig (vagrant/provision.sh): its host name, and its"
      print "dnl # domains are in no DNS (nothing to canonify, a sender domain that does not resolve"
      print "dnl # is no reason to refuse: the next hops are mailertable literals)"
      print "define(`confDOMAIN_NAME'"'"', `" host "'"'"')dnl"
      print "FEATURE(`nocanonify'"'"')dnl"
      print "FEATURE(`accept_unresolvable_domains'"'"')dnl"
      print "dnl # ---- pec-milter (milter-conf/sendmail/pec-milter.mc.snippet, as shipped)"
      while ((getline l < snip) > 0) print l
      print "dnl # ---- end of pec-milter.mc.snippet"
      inserted++
    }
    { print }
    END { exit !(daemons == 2 && inserted == 1) }' "$proto" > "$E/sendmail.mc" ||
    die "$proto: not the prototype expected (two DAEMON_OPTIONS with Addr=127.0.0.1, one \"Default Mailer setup\")"
  # the prototype includes these (sendmailconfig makes them); empty is their default. Debian's
  # postinst makes local-host-names and access too (kept as they are; empty in a dry run)
  for p in m4/dialup.m4 m4/provider.m4 local-host-names access; do [ -e "$E/$p" ] || : > "$E/$p"; done
  # mailertable: our PEC domain to pec-milter's delivery point (the snippet's line), the
  # other providers by address, every other domain refused (nothing leaves the rig, no DNS)
  {
    printf '%s\tpeclmtp:[127.0.0.1]\n' "$DOMAIN"
    for p in $PEERS; do printf '%s\tesmtp:[%s]\n' "$(pv "$p" DOMAIN)" "$(pv "$p" IP)"; done
    printf '.\terror:5.7.1:550 only the providers of the Vagrant rig are reachable\n'
  } > "$E/mailertable"
  # the other providers' MTAs deliver our PEC domain here (the snippet: relay-domains)
  ensure_line "$E/relay-domains" "$DOMAIN"
  # STARTTLS: the snippet's three files (a throwaway self-signed certificate for HOST, its own
  # CA; the key root-only 0600, as Sendmail wants)
  if [ ! -s "$E/tls/pec-server.key" ] || [ ! -s "$E/tls/pec-server.crt" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=$HOST" \
      -keyout "$E/tls/pec-server.key" -out "$E/tls/pec-server.crt" >/dev/null 2>&1 || die "openssl req"
  fi
  cp "$E/tls/pec-server.crt" "$E/tls/pec-ca.crt"
  own root:root 0600 "$E/tls/pec-server.key"
  own root:root 0644 "$E/tls/pec-server.crt" "$E/tls/pec-ca.crt"
  # Cyrus SASL for the application "Sendmail": the shipped file (sasldb /etc/sasldb2)
  install -m 644 "$SRC/milter-conf/sendmail/Sendmail.conf" "$R/etc/sasl2/Sendmail.conf"
  sasl_users "$R/etc/sasldb2"
  own root:root 0600 "$R/etc/sasldb2"
}
# sendmail_cf: sendmail.cf from the .mc (m4) and the mailertable's map. A dry run builds from a
# copy of sendmail-cf and of the .mc whose /usr/share/sendmail/cf and /etc/mail/ name the copy
# and PROVISION_ROOT: the same build, relocated.
sendmail_cf() {
  local E=$R/etc/mail mc cfdir p makemap=${MAKEMAP:-$(command -v makemap || echo /usr/sbin/makemap)}
  if [ -n "$R" ]; then
    cfdir=$R/.sendmail-cf
    rm -rf "$cfdir"; cp -r "$SM_SHARE/cf" "$cfdir"
    grep -rlZ -e /usr/share/sendmail/cf -e /etc/mail/ "$cfdir" |
      xargs -0 -r sed -i -e "s|/usr/share/sendmail/cf|$cfdir|g" -e "s|/etc/mail/|$E/|g"
    mc=$R/.sendmail.mc
    sed -e "s|/usr/share/sendmail/cf|$cfdir|g" -e "s|/etc/mail/|$E/|g" "$E/sendmail.mc" > "$mc"
  else
    mc=$E/sendmail.mc
  fi
  m4 "$mc" > "$E/sendmail.cf.new" 2>"$E/m4.err" && [ ! -s "$E/m4.err" ] ||
    { cat "$E/m4.err" >&2; die "m4 $E/sendmail.mc failed"; }
  rm -f "$E/m4.err"
  mv "$E/sendmail.cf.new" "$E/sendmail.cf"
  for p in mailertable access; do
    "$makemap" -C "$E/sendmail.cf" hash "$E/$p" < "$E/$p" || die "makemap $p"
  done
}
sendmail_start() {
  newaliases
  systemctl enable sendmail
  systemctl restart sendmail
}

# ------------------------------------------------------------------ checks and start
check_config() {
  local bin out
  bin=$(pec_bin) || die "no pec-milter binary (PEC_MILTER_BIN)"
  out=$("$bin" check-config --config "$R/etc/pec-milter/pec-milter.toml" 2>&1) ||
    { printf '%s\n' "$out" >&2; die "pec-milter check-config failed"; }
  log "pec-milter check-config: ok ($bin)"
}
# wait_tcp PORT SECS: until 127.0.0.1:PORT accepts
wait_tcp() {
  local i
  for ((i = 0; i < $2; i++)); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 1; done
  return 1
}
start_all() {
  local i code=
  log "clamd"
  clamd_signatures
  wait_tcp 3310 300 || die "clamd does not listen on 127.0.0.1:3310 (journalctl -u clamav-daemon)"
  # the MTA first: pec-milter's reinjection listener (127.0.0.1:10025) is the MTA's, and while
  # pec-milter is down the MTA answers 4xx (milter_default_action = tempfail, Sendmail F=T)
  log "$MTA"
  "${MTA}_start"
  wait_tcp 25 60 || die "$MTA does not listen on 25"
  wait_tcp 587 60 || die "$MTA does not listen on 587"
  wait_tcp 10025 60 || die "$MTA's reinjection listener is not on 127.0.0.1:10025"
  log "pec-milter"
  systemctl enable pec-milter
  systemctl restart pec-milter
  wait_tcp 8891 60 || die "pec-milter does not listen on 8891 (journalctl -u pec-milter)"
  for ((i = 0; i < 30; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$METRICS_LISTEN/health" || true)
    [ "$code" = 200 ] && break
    sleep 2
  done
  log "/health ($code):"
  curl -sS "http://$METRICS_LISTEN/health" || true
  echo
}

# ------------------------------------------------------------------ main
log "$PNAME ($DOMAIN) on $MTA, $HOST $IP; peers:$PEERS${R:+; dry run under $R}"
if [ "$DRY" != 1 ]; then
  [ "$(id -u)" = 0 ] || die "run as root"
  packages
  install_pec_milter
fi
pec_milter_files
check_config
clamd_files
"${MTA}_files"
case $MTA in
  postfix)  postfix_check; log "postfix check: ok" ;;
  sendmail) sendmail_cf; log "sendmail.cf built from sendmail.mc (m4)" ;;
esac
if [ "$DRY" = 1 ]; then
  log "dry run: files under $R, checked; nothing installed or started"
  exit 0
fi
start_all
log "up: $PNAME ($DOMAIN) at $IP; holders: $(holder_addrs | paste -sd' ')"
