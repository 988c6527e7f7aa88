#!/usr/bin/env bash
# integration/e2e-vagrant.sh — the Vagrant rig (vagrant/: two providers, A on Postfix and B on
# Sendmail) as far as it goes without a VM (none can be started here), in network namespaces
# with no way out (about 30 s):
#   (1) the files: bash -n of vagrant/provision.sh and identities.sh; ruby -c and `vagrant
#       validate --ignore-provider` of the Vagrantfile (Debian 12's vagrant, integration/deps.sh;
#       no provider can run here), which defines the machines a and b; no per-provider value
#       (name, domain, address, holder) is written in the Vagrantfile, provision.sh or
#       identities.sh: providers.env holds them all
#   (2) identities.sh, as the Vagrantfile's trigger runs it on the host: A and B each get their
#       own demo CA and provider certificate (pec-milter init-demo), each certificate chains to
#       its own CA only; the index LDIF lists both (index-entry: names, domains, mailReceipt
#       posta-certificata@<domain>); a second run keeps the identities
#   (3) provision.sh A in its dry run (PROVISION_ROOT, DRY_RUN=1): it passes its own checks
#       (check-config, postfix check) and writes /etc/pec-milter/pec-milter.toml = the package's
#       conffile (debian/conffile.sh; or the .deb's, from a stand-in .deb) with exactly the
#       per-provider values set ([provider] name / domain / domains, [index] ldif, [reception]
#       trust with both CAs, [metrics] listen) and nothing else; A's identity where [signing]
#       says, the index and both CAs where the values say; the holders' and the receipts'
#       Maildirs; main.cf = Debian's main.cf.debian and main.cf.tls, A's own lines, then
#       milter-conf/postfix/main.cf.snippet verbatim but virtual_mailbox_domains = A's domain;
#       master.cf = Debian's master.cf.dist services, its smtp inet replaced by the snippet's,
#       the snippet's three services as shipped (postconf -M / -P); pec-sender-login.regexp as
#       shipped; transport: B's domain to smtp:[B's IP]:25, every other domain error:; the
#       holder in the sasldb; clamd.conf on tcp 127.0.0.1:3310 with the 100M limits; a second
#       run writes the same files
#   (4) provision.sh B in its dry run: the same pec-milter.toml checks with B's values;
#       sendmail.mc = Debian's prototype (sendmail-cf) with the two Addr= clauses gone, B's rig
#       lines, and milter-conf/sendmail/pec-milter.mc.snippet verbatim; its m4 build (the
#       script's) holds the snippet's milter, reinjection daemon, peclmtp mailer, mailertable and
#       STARTTLS files, MTA and MSA on every address; Sendmail 8.17's address test mode
#       (sendmail -bt /parse) on that sendmail.cf routes B's domain to peclmtp [127.0.0.1], A's
#       to esmtp [A's IP], any other to the error mailer; the STARTTLS key 0600, Sendmail.conf as
#       shipped, the holder in a 0600 sasldb
#   (5) the two providers live, from the dry runs' files: each in its own network namespace,
#       joined by a veth pair with the VMs' addresses (no other route, no DNS); A's Postfix
#       started as Debian's unit does (configure-instance.sh, the chroot), B's Sendmail 8.17
#       on B's sendmail.cf, each pec-milter with its conffile's paths where the package puts
#       them (mount namespaces; the test-only pieces are listed at (5) below), a clamd each:
#       /health 200; (5a) mario on A's submission port (STARTTLS, AUTH) -> anna: accettazione,
#       the busta in anna's Maildir at B, B's presa in carico at A's posta-certificata, B's
#       avvenuta consegna, each signed by whom it should (openssl cms -verify with that CA);
#       (5b) anna on B's Sendmail submission port (STARTTLS, AUTH, Cyrus SASL as shipped) ->
#       mario: the same the other way; (5c) an envelope signed by a third demo identity (in no
#       index, CA not trusted) from A's address to B's port 25: a busta di anomalia for anna,
#       no presa in carico; the metrics count them; both daemons stop with status 0, their
#       keys are identities.sh's, `log verify` passes and the holder's extract of (5a) across
#       both logs has the accettazione, busta, presa in carico and avvenuta consegna
#   (6) provision.sh refuses (exit 2) DRY_RUN=1 without PROVISION_ROOT, PROVISION_ROOT without
#       DRY_RUN=1 and an unknown provider; the dry runs wrote nothing outside PROVISION_ROOT
#       (/etc/pec-milter, /var/lib/pec-milter, /etc/mail, /etc/sasl2/Sendmail.conf absent as
#       before; /etc/postfix/main.cf, /etc/sasldb2, /etc/clamav/clamd.conf unchanged)
# Not covered (needs the VMs): apt, the .deb's installation, systemd (the units of pec-milter,
# Postfix, Debian's Sendmail init script and its `make -C /etc/mail`), Debian's own sendmail
# postinst (users, /etc/mail files), freshclam and Debian's clamd, VirtualBox/libvirt networking.
# Env: PEC_MILTER_BIN (default target/debug/pec-milter), KEEP=1. Needs root, overlayfs (for
# Sendmail's /etc), Sendmail unpacked under /opt/sendmail and vagrant (integration/deps.sh);
# without vagrant (1) runs ruby -c only.
# Prints "N passed, N failed" last; exit 1 if anything failed.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

T0=$EPOCHREALTIME
BIN=$(pec_milter_bin)
rig_begin pecvg
need_pec_milter init-demo index-entry envelope inspect log
cd "$RIG_ROOT" || die "cannot cd to $RIG_ROOT"
SM=/opt/sendmail
SMBIN=$SM/usr/libexec/sendmail/sendmail
[ -x "$SMBIN" ] || die "$SMBIN not found: run integration/deps.sh (it unpacks Sendmail there)"
V=$RIG_ROOT/vagrant
# shellcheck source=vagrant/providers.env
. "$V/providers.env"
W=$RIG_BASE
PKI=$W/pki
# the dry runs' roots: Sendmail refuses world-writable path components (/tmp), so under
# /var/lib like e2e-sendmail's files
ROOTS=/var/lib/pec-milter-test/vagrant.$$
mkdir -p "$ROOTS" && chmod 755 /var/lib/pec-milter-test "$ROOTS" || die "mkdir $ROOTS"
rig_defer rm -rf "$ROOTS"
RA=$ROOTS/A RB=$ROOTS/B
A_CA=$PKI/A/ca.pem B_CA=$PKI/B/ca.pem
MARIO_V=${A_HOLDERS%%:*} ANNA_V=${B_HOLDERS%%:*}

# what the dry runs must not touch (compared at the end)
host_state() {
  local f
  for f in /etc/pec-milter /var/lib/pec-milter /var/spool/pec-milter /var/log/pec-milter /etc/mail /etc/sasl2/Sendmail.conf; do
    if [ -e "$f" ]; then echo "exists $f"; else echo "absent $f"; fi
  done
  for f in /etc/postfix/main.cf /etc/postfix/master.cf /etc/sasldb2 /etc/clamav/clamd.conf /etc/aliases; do
    if [ -e "$f" ]; then echo "$(cksum < "$f") $f"; else echo "absent $f"; fi
  done
}
host_state > "$W/host.before"

# ------------------------------------------------------------------ (1) the files
ok "(1) bash -n vagrant/provision.sh" bash -n "$V/provision.sh"
ok "(1) bash -n vagrant/identities.sh" bash -n "$V/identities.sh"
ok "(1) bash -n debian/conffile.sh, debian/build-deb.sh" bash -c 'bash -n debian/conffile.sh && bash -n debian/build-deb.sh'
ok "(1) ruby -c vagrant/Vagrantfile" ruby -c "$V/Vagrantfile"
vagrant_validate() {
  local t=$W/vagrant-home out
  mkdir -p "$t"
  # a throwaway Vagrant home and machine directory (nothing written into vagrant/), no
  # network (the namespace), no version check
  out=$(cd "$V" && ns_exec env HOME="$t" VAGRANT_HOME="$t/.vagrant.d" VAGRANT_DOTFILE_PATH="$t/dot" \
        VAGRANT_CHECKPOINT_DISABLE=1 PEC_DEB_DIR="$t/deb" vagrant validate --ignore-provider 2>&1)
  local rc=$?
  echo "$out"
  [ $rc = 0 ] && grep -q 'Vagrantfile validated successfully' <<<"$out" &&
    grep -q '==> a:' <<<"$out" && grep -q '==> b:' <<<"$out"
}
if command -v vagrant >/dev/null; then
  ls -A "$V" > "$W/vagrant-dir.before"
  ok "(1) vagrant validate --ignore-provider: valid, machines a and b ($(vagrant --version))" vagrant_validate
  ok "(1) ... and it wrote nothing into vagrant/ (no .vagrant)" bash -c "ls -A '$V' | diff '$W/vagrant-dir.before' -"
else
  _log "(1) vagrant is not installed (integration/deps.sh installs it): ruby -c only"
fi
# every per-provider value of providers.env appears in no script of the rig
per_provider_values_once() {
  local p k v f bad=0
  for p in $PROVIDERS; do
    for k in NAME DOMAIN HOST IP HOLDERS; do
      v="${p}_$k"; v=${!v}
      [ "$k" = HOLDERS ] && v=${v%%:*}
      for f in "$V/Vagrantfile" "$V/provision.sh" "$V/identities.sh"; do
        if grep -qF -- "$v" "$f"; then echo "${p}_$k ($v) written in $f"; bad=1; fi
      done
    done
  done
  return "$bad"
}
ok "(1) the per-provider values (names, domains, hosts, IPs, holders) are in providers.env only" per_provider_values_once
ok "(1) the Vagrantfile reads providers.env: machines, host names, IPs" \
  bash -c "grep -q 'providers.env' '$V/Vagrantfile' && grep -q '_HOST' '$V/Vagrantfile' && grep -q '_IP' '$V/Vagrantfile'"

# ------------------------------------------------------------------ (2) identities
ok "(2) identities.sh makes both identities and the index" env PEC_MILTER_BIN="$BIN" bash "$V/identities.sh" "$PKI" || rig_finish
for P in $PROVIDERS; do
  ok "(2) $P: provider.key (0600), provider.crt, ca.pem" \
    bash -c "[ -s $PKI/$P/provider.key ] && [ \$(stat -c %a $PKI/$P/provider.key) = 600 ] && [ -s $PKI/$P/provider.crt ] && [ -s $PKI/$P/ca.pem ]"
done
ok "(2) two different CAs" bash -c "! cmp -s '$A_CA' '$B_CA'"
ok "(2) A's certificate chains to A's CA" openssl verify -purpose any -CAfile "$A_CA" "$PKI/A/provider.crt"
ok "(2) B's certificate chains to B's CA" openssl verify -purpose any -CAfile "$B_CA" "$PKI/B/provider.crt"
fail "(2) A's certificate does not chain to B's CA" --code 2 openssl verify -purpose any -CAfile "$B_CA" "$PKI/A/provider.crt"
fail "(2) B's certificate does not chain to A's CA" --code 2 openssl verify -purpose any -CAfile "$A_CA" "$PKI/B/provider.crt"
ok "(2) A's certificate names its domain" bash -c "openssl x509 -in '$PKI/A/provider.crt' -noout -ext subjectAltName | grep -qF 'posta-certificata@$A_DOMAIN'"
index_has() {   # index_has NAME DOMAIN: an entry with providerName NAME, managedDomains DOMAIN, mailReceipt
  python3 - "$PKI/igpec.ldif" "$1" "$2" <<'PY'
import sys
text = open(sys.argv[1]).read().replace('\n ', '')
for block in text.split('\n\n'):
    lines = block.strip().splitlines()
    if ('providerName: ' + sys.argv[2]) in lines and ('managedDomains: ' + sys.argv[3]) in lines \
       and ('mailReceipt: posta-certificata@' + sys.argv[3]) in lines:
        sys.exit(0)
print(text); sys.exit(1)
PY
}
ok "(2) the index has the o=postacert root and two provider entries" \
  bash -c "grep -qx 'dn: o=postacert' '$PKI/igpec.ldif' && [ \$(grep -c '^dn: providerName=' '$PKI/igpec.ldif') = 2 ]"
ok "(2) the index lists A ($A_NAME, $A_DOMAIN)" index_has "$A_NAME" "$A_DOMAIN"
ok "(2) the index lists B ($B_NAME, $B_DOMAIN)" index_has "$B_NAME" "$B_DOMAIN"
sha_a=$(sha256sum < "$PKI/A/provider.key") sha_b=$(sha256sum < "$PKI/B/provider.key")
ok "(2) a second run keeps both identities" \
  bash -c "PEC_MILTER_BIN='$BIN' bash '$V/identities.sh' '$PKI' >/dev/null && [ \"\$(sha256sum < $PKI/A/provider.key)\" = '$sha_a' ] && [ \"\$(sha256sum < $PKI/B/provider.key)\" = '$sha_b' ]"

# ------------------------------------------------------------------ dry runs
# dry R P [ENV...]: provision.sh P's dry run into R, in the rig's namespace
dry() {
  local r=$1 p=$2; shift 2
  ns_exec env PROVISION_ROOT="$r" DRY_RUN=1 PEC_PKI="$PKI" PEC_MILTER_BIN="$BIN" \
    SENDMAIL_SHARE=$SM/usr/share/sendmail MAKEMAP=$SM/usr/libexec/sendmail/makemap "$@" \
    bash "$V/provision.sh" "$p"
}
# toml_changes BASE FILE: the uncommented lines of FILE that differ from BASE, as
# "[section] line", sorted (the section is the one each line is in)
toml_changes() {
  diff <(grep -v '^#' "$1") <(grep -v '^#' "$2") >/dev/null && return 0
  python3 - "$1" "$2" <<'PY'
import sys
def lines(p):
    sec, out = '', []
    for l in open(p):
        l = l.rstrip('\n')
        if l.startswith('#'):
            continue
        if l.startswith('['):
            sec = l
        out.append((sec, l))
    return out
a, b = lines(sys.argv[1]), lines(sys.argv[2])
if len(a) != len(b):
    print('line counts differ: %d, %d' % (len(a), len(b)))
for (sa, la), (sb, lb) in zip(a, b):
    if la != lb:
        print('%s %s' % (sb, lb))
PY
}
# toml_is_conffile_plus R P BASE: R's pec-milter.toml is BASE with exactly P's values
toml_is_conffile_plus() {
  local r=$1 p=$2 base=$3 want got name dom
  name=$(eval echo "\"\$${p}_NAME\"") dom=$(eval echo "\"\$${p}_DOMAIN\"")
  want=$(printf '%s\n' \
    "[provider] name = \"$name\"" \
    "[provider] domain = \"$dom\"" \
    "[provider] domains = [\"$dom\"]" \
    "[index] ldif = \"$r/etc/pec-milter/igpec.ldif\"" \
    "[reception] trust = [\"$r/etc/pec-milter/trust/A-ca.pem\", \"$r/etc/pec-milter/trust/B-ca.pem\"]" \
    "[metrics] listen = \"$METRICS_LISTEN\"" | sort)
  got=$(toml_changes "$base" "$r/etc/pec-milter/pec-milter.toml" | sort)
  echo "changed lines:"; echo "$got"
  [ "$got" = "$want" ] || { echo "expected:"; echo "$want"; return 1; }
}
bash debian/conffile.sh > "$W/conffile.toml" || die "debian/conffile.sh"
# a stand-in .deb holding the conffile (with a marker line), for PEC_DEB: the VMs start from
# the .deb's own copy (dpkg-deb --fsys-tarfile, the path cargo-deb writes: ./etc/...)
mkdir -p "$W/deb/DEBIAN" "$W/deb/etc/pec-milter"
printf 'Package: pec-milter\nVersion: 0.0.0-test\nArchitecture: all\nMaintainer: test <t@test>\nDescription: stand-in\n' > "$W/deb/DEBIAN/control"
{ echo "# stand-in .deb marker"; cat "$W/conffile.toml"; } > "$W/deb/etc/pec-milter/pec-milter.toml"
dpkg-deb --root-owner-group -b "$W/deb" "$W/pec-milter_0.0.0-test_all.deb" >/dev/null || die "dpkg-deb -b"

common_toml_checks() {   # common_toml_checks P R
  local p=$1 r=$2 dom
  dom=$(eval echo "\"\$${p}_DOMAIN\"")
  ok "($3) $p: pec-milter.toml is the package's conffile with exactly $p's values" toml_is_conffile_plus "$r" "$p" "$W/conffile.toml"
  ok "($3) $p: pec-milter check-config passes on it" "$BIN" check-config --config "$r/etc/pec-milter/pec-milter.toml"
  ok "($3) $p: its identity where [signing] says (/var/lib/pec-milter/demo), the key 0600" \
    bash -c "cmp $PKI/$p/provider.key $r/var/lib/pec-milter/demo/provider.key && cmp $PKI/$p/provider.crt $r/var/lib/pec-milter/demo/provider.crt && cmp $PKI/$p/ca.pem $r/var/lib/pec-milter/demo/ca.pem && [ \$(stat -c %a $r/var/lib/pec-milter/demo/provider.key) = 600 ]"
  ok "($3) $p: the index and both CAs where [index] ldif and [reception] trust say" \
    bash -c "cmp $PKI/igpec.ldif $r/etc/pec-milter/igpec.ldif && cmp $A_CA $r/etc/pec-milter/trust/A-ca.pem && cmp $B_CA $r/etc/pec-milter/trust/B-ca.pem"
  ok "($3) $p: Maildirs of the holders and of posta-certificata@$dom" maildirs_made "$p" "$r"
}
maildirs_made() {   # maildirs_made P R
  local h u dom
  h=$(eval echo "\"\$${1}_HOLDERS\"") dom=$(eval echo "\"\$${1}_DOMAIN\"")
  for u in ${h%%:*} "posta-certificata@$dom"; do
    [ -d "$2/var/lib/pec-milter/mail/$dom/${u%@*}" ] || { echo "no Maildir of $u"; return 1; }
  done
}
# second_run_same R P SNAP: the dry run again, and the same files
second_run_same() { dry "$1" "$2" >/dev/null && snap "$1" | diff "$3" -; }

# ------------------------------------------------------------------ (3) A, Postfix
ok "(3) provision.sh A, dry run: its checks pass (check-config, postfix check)" dry "$RA" A || rig_finish
common_toml_checks A "$RA" 3
E=$RA/etc/postfix
SHIP=$RIG_ROOT/milter-conf/postfix
main_cf_layout() {
  local n1 n2 cut
  n1=$(wc -l < /usr/share/postfix/main.cf.debian) n2=$(wc -l < /usr/share/postfix/main.cf.tls)
  head -n "$n1" "$E/main.cf" | cmp - /usr/share/postfix/main.cf.debian || { echo "main.cf does not start with main.cf.debian"; return 1; }
  sed -n "$((n1 + 2)),$((n1 + 1 + n2))p" "$E/main.cf" | cmp - /usr/share/postfix/main.cf.tls || { echo "main.cf.tls does not follow"; return 1; }
  cut=$(grep -nxF "$(head -n 1 "$SHIP/main.cf.snippet")" "$E/main.cf" | cut -d: -f1)
  [ -n "$cut" ] || { echo "no snippet in main.cf"; return 1; }
  # the snippet to the end, verbatim but for its virtual_mailbox_domains line
  diff <(tail -n +"$cut" "$E/main.cf") "$SHIP/main.cf.snippet" > "$W/snippet.diff"
  cat "$W/snippet.diff"
  [ "$(grep -c '^[<>]' "$W/snippet.diff")" = 2 ] && grep -qx "< virtual_mailbox_domains = $A_DOMAIN" "$W/snippet.diff" &&
    grep -qx '> virtual_mailbox_domains = pec.demo.test' "$W/snippet.diff"
}
ok "(3) main.cf: main.cf.debian, main.cf.tls, A's lines, then the shipped snippet verbatim but virtual_mailbox_domains = $A_DOMAIN" main_cf_layout
snippet_settings_as_shipped() {
  local ref=$W/ref-main k v n=0 bad=0
  mkdir -p "$ref"; cp "$SHIP/main.cf.snippet" "$ref/main.cf"; : > "$ref/master.cf"
  for k in $(postconf -c "$ref" -n | sed 's/ *=.*//' | grep -vx config_directory); do
    v=$(postconf -c "$ref" -h "$k"); n=$((n + 1))
    [ "$k" = virtual_mailbox_domains ] && v=$A_DOMAIN
    [ "$(postconf -c "$E" -h "$k")" = "$v" ] || { echo "$k = $(postconf -c "$E" -h "$k"), shipped $v"; bad=1; }
  done
  echo "$n settings compared"
  [ "$n" -ge 15 ] && return "$bad"
}
ok "(3) postconf: every setting of main.cf.snippet has its shipped value (but the domain)" snippet_settings_as_shipped
master_cf_as_shipped() {
  local ref=$W/ref-master s
  mkdir -p "$ref"; : > "$ref/main.cf"; cp "$SHIP/master.cf.snippet" "$ref/master.cf"
  for s in smtp/inet submission/inet 127.0.0.1:10025/inet pec-cleanup/unix; do
    diff <(postconf -c "$ref" -M "$s") <(postconf -c "$E" -M "$s") || { echo "$s differs"; return 1; }
    diff <(postconf -c "$ref" -P "$s/*") <(postconf -c "$E" -P "$s/*") || { echo "$s -o differ"; return 1; }
  done
  [ "$(postconf -c "$E" -M | awk '$1 == "smtp" && $2 == "inet"' | wc -l)" = 1 ] || { echo "more than one smtp inet"; return 1; }
}
ok "(3) master.cf: the snippet's smtp, submission, 127.0.0.1:10025, pec-cleanup services as shipped (postconf -M, -P), one smtp inet" master_cf_as_shipped
debian_services_kept() {
  local ref=$W/ref-debian l
  mkdir -p "$ref"; : > "$ref/main.cf"; cp /usr/share/postfix/master.cf.dist "$ref/master.cf"
  while IFS= read -r l; do
    grep -qxF -- "$l" <(postconf -c "$E" -M) || { echo "missing: $l"; return 1; }
  done < <(postconf -c "$ref" -M | awk '!($1 == "smtp" && $2 == "inet")')
}
ok "(3) master.cf: Debian's master.cf.dist services kept, as they are" debian_services_kept
ok "(3) pec-sender-login.regexp as shipped" cmp "$SHIP/pec-sender-login.regexp" "$E/pec-sender-login.regexp"
ok "(3) transport: $B_DOMAIN -> smtp:[$B_IP]:25 (a literal: no DNS)" \
  bash -c "[ \"\$(postmap -c $E -q $B_DOMAIN texthash:$E/transport)\" = 'smtp:[$B_IP]:25' ]"
ok "(3) any other domain: error: (default_transport, relay_transport), no DNS" \
  bash -c "postconf -c $E -h default_transport | grep -q '^error:' && postconf -c $E -h relay_transport | grep -q '^error:' && [ \$(postconf -c $E -h smtp_dns_support_level) = disabled ]"
ok "(3) $A_DOMAIN is not in mydestination (the delivery point takes it)" \
  bash -c "! postconf -c $E -h mydestination | grep -qw '$A_DOMAIN'"
ok "(3) SASL: smtpd.conf names the sasldb, which holds $MARIO_V (root:postfix 0640)" \
  bash -c "grep -qx 'sasldb_path: $RA/etc/sasldb2' $E/sasl/smtpd.conf && sasldblistusers2 -f $RA/etc/sasldb2 | grep -q '^${MARIO_V%@*}@${MARIO_V#*@}:' && [ \"\$(stat -c '%U:%G %a' $RA/etc/sasldb2)\" = 'root:postfix 640' ]"
if [ -f /etc/clamav/clamd.conf ]; then
  ok "(3) clamd.conf: tcp 127.0.0.1:3310 (the conffile's [clamd] address), 100M limits" \
    bash -c "for l in 'TCPSocket 3310' 'TCPAddr 127.0.0.1' 'StreamMaxLength 100M' 'MaxScanSize 100M' 'MaxFileSize 100M'; do grep -qx \"\$l\" $RA/etc/clamav/clamd.conf || { echo \"no \$l\"; exit 1; }; done"
fi
# snap R: checksums of the files a dry run writes (sendmail.cf less m4's "built by ... on DATE")
snap() {
  local f
  for f in etc/pec-milter/pec-milter.toml etc/postfix/main.cf etc/postfix/master.cf etc/postfix/transport \
           etc/mail/sendmail.mc etc/mail/sendmail.cf etc/mail/mailertable etc/mail/relay-domains; do
    [ -f "$1/$f" ] && printf '%s %s\n' "$(grep -v '^##### ' "$1/$f" | cksum)" "$f"
  done
  return 0
}
snap "$RA" > "$W/a.snap1"
ok "(3) a second dry run passes and writes the same files" second_run_same "$RA" A "$W/a.snap1"
from_deb() {
  dry "$ROOTS/A-deb" A PEC_DEB="$W/pec-milter_0.0.0-test_all.deb" >/dev/null &&
    head -n 1 "$ROOTS/A-deb/etc/pec-milter/pec-milter.toml" | grep -qx '# stand-in .deb marker'
}
ok "(3) with PEC_DEB (a stand-in .deb), the conffile comes from the .deb" from_deb

# ------------------------------------------------------------------ (4) B, Sendmail
ok "(4) provision.sh B, dry run: its checks pass (check-config, m4 of sendmail.mc)" dry "$RB" B || rig_finish
common_toml_checks B "$RB" 4
M=$RB/etc/mail
PROTO=$SM/usr/share/sendmail/cf/debian/sendmail.mc
SNIP=$RIG_ROOT/milter-conf/sendmail/pec-milter.mc.snippet
mc_layout() {
  local start end
  # the snippet, verbatim, between its two markers
  start=$(grep -n '^dnl # ---- pec-milter (milter-conf/sendmail/pec-milter.mc.snippet, as shipped)$' "$M/sendmail.mc" | cut -d: -f1)
  end=$(grep -n '^dnl # ---- end of pec-milter.mc.snippet$' "$M/sendmail.mc" | cut -d: -f1)
  [ -n "$start" ] && [ -n "$end" ] || { echo "no snippet markers"; return 1; }
  sed -n "$((start + 1)),$((end - 1))p" "$M/sendmail.mc" | cmp - "$SNIP" || { echo "the snippet is not verbatim"; return 1; }
  # the rest: Debian's prototype, less the two Addr= clauses, plus B's rig lines
  diff "$PROTO" <(sed "$start,${end}d" "$M/sendmail.mc") > "$W/mc.diff"
  cat "$W/mc.diff"
  [ "$(grep -c '^<' "$W/mc.diff")" = 2 ] && [ "$(grep -c '^<.*Addr=127.0.0.1' "$W/mc.diff")" = 2 ] &&
    ! grep '^>' "$W/mc.diff" | grep -v '^> dnl #' | grep -vE "^> (define\(\`confDOMAIN_NAME', \`$B_HOST'\)dnl|FEATURE\(\`nocanonify'\)dnl|FEATURE\(\`accept_unresolvable_domains'\)dnl|DAEMON_OPTIONS\(\`Family=inet,  Name=(MTA|MSP)-v4, Port=(smtp|submission)(, M=Ea)?'\)dnl)$"
}
ok "(4) sendmail.mc: Debian's prototype, its MTA and MSA without Addr=, B's rig lines, the snippet verbatim" mc_layout
ok "(4) sendmail.cf (m4): the snippet's milter with F=T, the reinjection daemon, the peclmtp LMTP mailer" \
  bash -c "grep -q '^Xpec-milter, S=inet:8891@127.0.0.1, F=T' $M/sendmail.cf && grep -q '^O DaemonPortOptions=Name=reinject, Addr=127.0.0.1, Port=10025, InputMailFilters=' $M/sendmail.cf && grep -qE '^Mpeclmtp,[[:space:]]+P=\[IPC\], F=[^,]*z' $M/sendmail.cf"
ok "(4) sendmail.cf: MTA on port 25 and MSA (AUTH required) on 587 on every address" \
  bash -c "grep -qx 'O DaemonPortOptions=Family=inet,  Name=MTA-v4, Port=smtp' $M/sendmail.cf && grep -qx 'O DaemonPortOptions=Family=inet,  Name=MSP-v4, Port=submission, M=Ea' $M/sendmail.cf"
ok "(4) sendmail.cf: STARTTLS files, AuthOptions A p, {auth_authen} at MAIL, the mailertable" \
  bash -c "grep -qx 'O ServerCertFile=$M/tls/pec-server.crt' $M/sendmail.cf && grep -qx 'O AuthOptions=A p' $M/sendmail.cf && grep -q '^O Milter.macros.envfrom=.*{auth_authen}' $M/sendmail.cf && grep -q '^Kmailertable hash $M/mailertable' $M/sendmail.cf"
ok "(4) relay-domains: $B_DOMAIN" grep -qx "$B_DOMAIN" "$M/relay-domains"
parse() {   # parse ADDR: Sendmail 8.17's address test mode on B's sendmail.cf (its host name)
  printf '/parse %s\n' "$1" | ns_exec unshare --uts sh -c "hostname $B_HOST; exec $SMBIN -C $M/sendmail.cf -bt" 2>&1 |
    grep -E '^mailer |Transient|timeout'
}
parse_is() { local r; r=$(parse "$1"); echo "$r"; [ "$r" = "$2" ]; }
ok "(4) sendmail -bt: $ANNA_V -> peclmtp [127.0.0.1] (pec-milter's delivery point)" \
  parse_is "$ANNA_V" "mailer peclmtp, host [127.0.0.1], user $ANNA_V"
ok "(4) sendmail -bt: $MARIO_V -> esmtp [$A_IP] (A's MX, a literal)" \
  parse_is "$MARIO_V" "mailer esmtp, host [$A_IP], user $MARIO_V"
parse_error() { local r; r=$(parse "$1"); echo "$r"; [[ $r == "mailer *error*, host 5.7.1, user 550 "* ]]; }
ok "(4) sendmail -bt: someone@example.org -> the error mailer (nothing leaves the rig)" parse_error someone@example.org
ok "(4) STARTTLS files: the key root 0600, the certificate for $B_HOST" \
  bash -c "[ \"\$(stat -c '%U %a' $M/tls/pec-server.key)\" = 'root 600' ] && openssl x509 -in $M/tls/pec-server.crt -noout -subject | grep -q 'CN *= *$B_HOST' && cmp $M/tls/pec-server.crt $M/tls/pec-ca.crt"
ok "(4) Cyrus SASL: Sendmail.conf as shipped, the sasldb (root 0600) holds $ANNA_V" \
  bash -c "cmp $RIG_ROOT/milter-conf/sendmail/Sendmail.conf $RB/etc/sasl2/Sendmail.conf && [ \"\$(stat -c '%U %a' $RB/etc/sasldb2)\" = 'root 600' ] && sasldblistusers2 -f $RB/etc/sasldb2 | grep -q '^${ANNA_V%@*}@${ANNA_V#*@}:'"
snap "$RB" > "$W/b.snap1"
ok "(4) a second dry run passes and writes the same files" second_run_same "$RB" B "$W/b.snap1"

# ------------------------------------------------------------------ (5) the two providers, live
# Each provider in its own network namespace (A's: the rig's), joined by a veth pair with the
# VMs' addresses (providers.env), no other route, no DNS. Everything runs from the dry runs'
# files; TEST-ONLY, what a VM has and this machine has not:
#   pec-milter  PKG_RUN: a private mount namespace puts ROOT/var/{lib,spool,log}/pec-milter at
#               /var/{lib,spool,log}/pec-milter (tmpfs over /var/lib, /var/spool, /var/log, ROOT
#               bound back where it was), where the conffile's unchanged paths point; as root
#   Postfix     Debian's own /usr/lib/postfix/configure-instance.sh (what its unit runs: the
#               chroot under the queue directory) with MAIL_CONFIG = A's etc/postfix, then
#               `postfix -c DIR start`
#   Sendmail    Sendmail 8.17 from /opt/sendmail (`-bD`) on B's sendmail.cf (the dry run's, its
#               /etc/mail/ moved under ROOT) in a private mount and UTS namespace: B's host name;
#               an overlay on /etc adding what Debian's sendmail packages and the provisioning
#               make there — the users smmta / smmsp (TrustedUser), /etc/sasl2/Sendmail.conf and
#               /etc/sasldb2 (copied from the dry run's); tmpfs for /var/spool/mqueue,
#               /var/lib/sendmail, /run/sendmail
#   clamd       lib.sh's (EICAR signatures), on 127.0.0.1:3310 in each namespace
# Then: mario (A's submission, STARTTLS + AUTH PLAIN) -> anna: the accettazione, the busta at
# B, B's presa in carico at A's posta-certificata, B's avvenuta consegna; anna (B's Sendmail
# submission, STARTTLS + AUTH PLAIN) -> mario: the same the other way; an envelope signed by a
# third demo identity (in no index, its CA trusted by nobody) from A's address to B's port 25: a
# busta di anomalia for anna; the holder's extract across both logs.
RIG_DEFER_NS=1
NSA=$RIG_NETNS
netns_up "pecvgB$$" || die "cannot create network namespace pecvgB$$"
NSB=$RIG_NETNS
RIG_NETNS=$NSA
inA() { local RIG_NETNS=$NSA; "$@"; }
inB() { local RIG_NETNS=$NSB; "$@"; }
VA=vga$$ VB=vgb$$
_veth_del() {
  ip -n "$NSA" link del "$VA" 2>/dev/null || ip link del "$VA" 2>/dev/null
  ! ip -n "$NSA" link show "$VA" >/dev/null 2>&1 && ! ip link show "$VA" >/dev/null 2>&1
}
veth_up() {
  rig_defer _veth_del
  ip link add "$VA" type veth peer name "$VB" || return 1
  ip link set "$VA" netns "$NSA" && ip link set "$VB" netns "$NSB" || return 1
  ip -n "$NSA" addr add "$A_IP/24" dev "$VA" && ip -n "$NSB" addr add "$B_IP/24" dev "$VB" || return 1
  ip -n "$NSA" link set "$VA" up && ip -n "$NSB" link set "$VB" up
}
ok "(5) veth pair $A_IP ($NSA) <-> $B_IP ($NSB), the VMs' private network" veth_up || rig_finish
ok "(5) no default route in either namespace" bash -c "[ -z \"\$(ip -n $NSA route show default)\" ] && [ -z \"\$(ip -n $NSB route show default)\" ]"

PKG_RUN=$W/pkg-run
cat > "$PKG_RUN" <<'SH'
#!/bin/sh
exec unshare --mount --propagation private /bin/sh -c '
  set -e
  R=$1 S=$2 BIN=$3; shift 3
  mkdir -p "$S"; mount --bind "$R" "$S"
  for d in lib spool log; do mount -t tmpfs -o mode=755 tmpfs /var/$d; done
  mkdir -p "$R"; mount --bind "$S" "$R"
  for d in lib spool log; do mkdir -p /var/$d/pec-milter; mount --bind "$R/var/$d/pec-milter" /var/$d/pec-milter; done
  exec "$BIN" "$@"' sh "$PKG_ROOT" "$PKG_STAGE" "$PKG_BIN" "$@"
SH
chmod 755 "$PKG_RUN"
# pkg_up P: P's pec-milter, as the package's unit would find its files
pkg_up() {
  local r=$1
  mkdir -p "$r/var/spool/pec-milter" "$r/var/log/pec-milter"   # the postinst's
  PKG_ROOT=$r PKG_STAGE=$W/stage-${r##*/} PKG_BIN=$BIN PEC_MILTER_BIN=$PKG_RUN \
    pec_milter_up "$W/run-${r##*/}" "$r/etc/pec-milter/pec-milter.toml"
}
# Postfix A: Debian's chroot preparation, then start; stop waits for its master
pf_a_up() {
  rig_defer pf_a_down
  ns_exec env MAIL_CONFIG="$RA/etc/postfix" /usr/lib/postfix/configure-instance.sh - || return 1
  ns_exec postfix -c "$RA/etc/postfix" start >/dev/null 2>&1 || { ns_exec script -qec "postfix -c $RA/etc/postfix check" /dev/null; return 1; }
  wait_port "$A_IP" 25 10 && wait_port 127.0.0.1 587 10 && wait_port 127.0.0.1 10025 10
}
pf_a_down() {
  local pid i
  pid=$(tr -d ' ' < "$RA/var/spool/postfix/pid/master.pid" 2>/dev/null)
  _alive "$pid" || return 0
  RIG_NETNS=$NSA ns_exec postfix -c "$RA/etc/postfix" stop >/dev/null 2>&1
  for ((i = 0; i < 200; i++)); do _alive "$pid" || return 0; sleep 0.05; done
  kill -KILL "$pid"; return 1
}
SM_RUN=$W/sm-run
cat > "$SM_RUN" <<'SH'
#!/bin/sh
exec unshare --mount --uts --propagation private /bin/sh -c '
  set -e
  R=$1 S=$2 T=$3 HOST=$4 SMBIN=$5
  hostname "$HOST"
  mkdir -p "$T" "$S"; mount -t tmpfs tmpfs "$T"; mkdir "$T/u" "$T/w"
  mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/u,workdir=$T/w" /etc
  grep -q "^smmta:" /etc/passwd || echo "smmta:x:64999:64999:Mail Transfer Agent:/var/lib/sendmail:/usr/sbin/nologin" >> /etc/passwd
  grep -q "^smmta:" /etc/group || printf "smmta:x:64999:\nsmmsp:x:64998:\n" >> /etc/group
  mkdir -p /etc/sasl2; cp "$R/etc/sasl2/Sendmail.conf" /etc/sasl2/; cp -p "$R/etc/sasldb2" /etc/sasldb2
  mount --bind "$R" "$S"
  mount -t tmpfs -o mode=755 tmpfs /var/lib; mkdir -p "$R"; mount --bind "$S" "$R"
  mkdir -p /var/lib/sendmail/host_status
  mount -t tmpfs -o mode=755 tmpfs /var/spool; mkdir -m 700 /var/spool/mqueue
  mount -t tmpfs -o mode=755 tmpfs /run; mkdir -p /run/sendmail/mta
  exec "$SMBIN" -C "$R/etc/mail/sendmail.cf" -bD -q10s' sh "$@"
SH
chmod 755 "$SM_RUN"
sm_b_up() {
  # a simple command in the background: ip netns exec, unshare and sh exec, $! is sendmail
  ip netns exec "$NSB" "$SM_RUN" "$RB" "$W/stage-sm" "$W/sm-etc" "$B_HOST" "$SMBIN" >"$W/sendmail.out" 2>&1 &
  echo $! > "$W/sendmail.pid"
  rig_defer _kill_pidfile "$W/sendmail.pid" 10
  wait_port "$B_IP" 25 15 && wait_port 127.0.0.1 587 15 && wait_port 127.0.0.1 10025 15 ||
    { cat "$W/sendmail.out"; return 1; }
}
ok "(5) A: clamd" inA clamd_up "$W/clamd-A" 3310 || rig_finish
ok "(5) B: clamd" inB clamd_up "$W/clamd-B" 3310 || rig_finish
ok "(5) A: Postfix from A's dry run (Debian's configure-instance.sh, postfix start): 25, 587, 10025" inA pf_a_up || rig_finish
ok "(5) B: Sendmail 8.17 on B's sendmail.cf (-bD): 25, 587, 10025" inB sm_b_up || rig_finish
ok "(5) A: pec-milter from A's pec-milter.toml, its files where the package puts them" inA pkg_up "$RA" || rig_finish
ok "(5) B: pec-milter from B's pec-milter.toml, its files where the package puts them" inB pkg_up "$RB" || rig_finish
ok "(5) A reaches B's port 25 over the private network" inA wait_port "$B_IP" 25 5
ok "(5) B reaches A's port 25 over the private network" inB wait_port "$A_IP" 25 5
# scrape P PATH [OUT]: GET PATH on P's [metrics] listen (in P's namespace)
scrape() {
  local ns=$NSA; [ "$1" = B ] && ns=$NSB
  if [ -n "${3:-}" ]; then ip netns exec "$ns" curl -sS --max-time 5 -o "$3" -w '%{http_code}' "http://$METRICS_LISTEN$2"
  else ip netns exec "$ns" curl -sS --max-time 5 "http://$METRICS_LISTEN$2"; fi
}
health_200() { local c i; for ((i = 0; i < 50; i++)); do c=$(scrape "$1" /health "$W/health-$1"); [ "$c" = 200 ] && { cat "$W/health-$1"; return 0; }; sleep 0.2; done; echo "HTTP $c"; cat "$W/health-$1"; return 1; }
ok "(5) A: /health on [metrics] listen $METRICS_LISTEN is 200" health_200 A
ok "(5) B: /health on [metrics] listen $METRICS_LISTEN is 200" health_200 B

CA=$W/both-ca.pem
cat "$A_CA" "$B_CA" > "$CA"
MARIO_MD=$RA/var/lib/pec-milter/mail/$A_DOMAIN/${MARIO_V%@*}  ARIC_MD=$RA/var/lib/pec-milter/mail/$A_DOMAIN/posta-certificata
ANNA_MD=$RB/var/lib/pec-milter/mail/$B_DOMAIN/${ANNA_V%@*}    BRIC_MD=$RB/var/lib/pec-milter/mail/$B_DOMAIN/posta-certificata
# kinds_since MAILDIR: file<TAB>kind of the files arrived since mark; wait_kind MAILDIR KIND: until
# one such file (FOUND: its path); count_kinds MAILDIR: how many since mark
kinds_since() { local f; for f in $(new_files "$1"); do printf '%s\t%s\n' "$f" "$(inspect_get "$f" 'd["kind"]')"; done; }
FOUND=
wait_kind() {
  local i
  for ((i = 0; i < 150; i++)); do
    FOUND=$(kinds_since "$1" | awk -F'\t' -v k="$2" '$2 == k { print $1; exit }')
    [ -n "$FOUND" ] && { echo "$2: $FOUND"; return 0; }
    sleep 0.2
  done
  echo "no $2 in $1 after 30 s; new:"; kinds_since "$1"; return 1
}
new_is() { local n; n=$(new_files "$1" | grep -c . || true); echo "$n new in $1"; kinds_since "$1"; [ "$n" -eq "$2" ]; }
eod_250() { grep -qE '^<[-~] +250 .*(queued|accepted)' "$1" || { cat "$1"; return 1; }; }
# submit NS SERVER USER PW FROM TO SUBJECT OUT: swaks with STARTTLS and AUTH PLAIN
submit() {
  ip netns exec "$1" swaks --server "$2" --helo client.test --tls --auth PLAIN --auth-user "$3" --auth-password "$4" \
    --from "$5" --to "$6" --header "Subject: $7" --body "body of $7" --timeout 60 > "$8" 2>&1
}

# exchange TAG X Y SUBJECT X_MD X_RIC_MD Y_MD VIA [ACC] [PIC]: X's holder (Maildir X_MD), on X's VIA,
# sends SUBJECT to Y's (Y_MD): 250; X's accettazione and the busta (signed by X) come, then Y's presa
# in carico at X's posta-certificata (X_RIC_MD) and Y's avvenuta consegna (signed by Y). ACC, PIC:
# the route of the accettazione, the presa in carico (for the names). F: the avvenuta consegna.
exchange() {
  local tag=$1 x=$2 y=$3 subj=$4 xmd=$5 xric=$6 ymd=$7 via=$8 acc=${9:-} pic=${10:-}
  local xh=${x}_HOLDERS yh=${y}_HOLDERS ns=NS$x xca=${x}_CA yca=${y}_CA
  local from=${!xh%%:*} pw=${!xh#*:} to=${!yh%%:*}
  mark "$xmd" "$xric" "$ymd"
  ok "($tag) ${from%%.*} on $x's $via -> ${to%%.*}: 250" \
    submit "${!ns}" 127.0.0.1:587 "$from" "$pw" "$from" "$to" "$subj" "$W/$tag.txt"
  ok "($tag) ... the end of DATA: 250" eod_250 "$W/$tag.txt"
  ok "($tag) ${from%%.*} gets the accettazione$acc" wait_kind "$xmd" accettazione; F=$FOUND
  [ -n "$F" ] && ok "($tag) accettazione: signed by $x (openssl cms -verify with $x's CA)" cms_ok "$F" "${!xca}"
  ok "($tag) ${to%%.*}'s Maildir at $y gets the busta di trasporto" wait_kind "$ymd" posta-certificata; F=$FOUND
  [ -n "$F" ] && ok "($tag) busta: signed by $x" cms_ok "$F" "${!xca}"
  ok "($tag) $x's posta-certificata gets $y's presa in carico$pic" wait_kind "$xric" presa-in-carico; F=$FOUND
  [ -n "$F" ] && ok "($tag) presa in carico: signed by $y" cms_ok "$F" "${!yca}"
  ok "($tag) ${from%%.*} gets $y's avvenuta consegna" wait_kind "$xmd" avvenuta-consegna; F=$FOUND
  [ -n "$F" ] && ok "($tag) avvenuta consegna: signed by $y" cms_ok "$F" "${!yca}"
}

TS_DAY=$(TZ=Europe/Rome date +%F) SUBJ_A="vagrant rig A to B $RANDOM"
exchange 5a A B "$SUBJ_A" "$MARIO_MD" "$ARIC_MD" "$ANNA_MD" "submission port (STARTTLS, AUTH PLAIN)"
[ -n "$F" ] && ok "(5a) avvenuta consegna: gestore-emittente $B_NAME" field_is "$F" 'd["daticert"]["gestore_emittente"]' "$B_NAME"
ok "(5a) nothing else for mario (accettazione, avvenuta consegna)" new_is "$MARIO_MD" 2

SUBJ_B="vagrant rig B to A $RANDOM"
exchange 5b B A "$SUBJ_B" "$ANNA_MD" "$BRIC_MD" "$MARIO_MD" \
  "Sendmail submission port (STARTTLS, AUTH PLAIN, Cyrus SASL as shipped)" \
  " (B's reinjection, mailertable peclmtp)" " (B's mailertable: esmtp:[$A_IP])"

R3=$W/rogue
mkdir -p "$R3"
printf '[provider]\nname = "%s"\ndomain = "%s"\ndomains = ["%s"]\n[signing]\nkey = "%s/provider.key"\ncert = "%s/provider.crt"\n[index]\nsource = "none"\n' \
  "$A_NAME" "$A_DOMAIN" "$A_DOMAIN" "$R3" "$R3" > "$R3/id.toml"
ok "(5c) a third demo identity, as A, in no index, its CA trusted by nobody" "$BIN" init-demo --config "$R3/id.toml"
rogue_envelope() {
  printf 'From: <%s>\r\nTo: <%s>\r\nSubject: vagrant rig rogue\r\nMessage-ID: <rogue.%s@client.test>\r\nDate: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nrogue\r\n' \
    "$MARIO_V" "$ANNA_V" "$$" "$(LC_ALL=C date -R)" > "$W/rogue.orig" &&
  "$BIN" envelope --key "$R3/provider.key" --cert "$R3/provider.crt" --gestore "$A_NAME" --domain "$A_DOMAIN" \
    --certified "$A_DOMAIN,$B_DOMAIN" "$W/rogue.orig" > "$W/rogue.eml" && [ -s "$W/rogue.eml" ]
}
ok "(5c) an envelope as A signed by it" rogue_envelope
mark "$ANNA_MD" "$ARIC_MD"
ok "(5c) sent from A's address to B's port 25 (Sendmail, B's reception point): accepted" \
  bash -c "ip netns exec $NSA swaks --server $B_IP:25 --helo $A_HOST --from posta-certificata@$A_DOMAIN --to $ANNA_V --data $W/rogue.eml --timeout 60 > $W/5c.txt 2>&1; grep -qE '^<- +250 .*accepted' $W/5c.txt || { cat $W/5c.txt; exit 1; }"
ok "(5c) anna gets a busta di anomalia, signed by B" wait_kind "$ANNA_MD" errore; F=$FOUND
anomaly_by() { hdr_is "$1" X-Trasporto errore && cms_ok "$1" "$2"; }
[ -n "$F" ] && ok "(5c) anomaly: X-Trasporto: errore, openssl cms -verify with B's CA" anomaly_by "$F" "$B_CA"
sleep 2
ok "(5c) no presa in carico from B for it" new_is "$ARIC_MD" 0

metric_ge() { local v; v=$(scrape "$1" /metrics | awk -v s="$2" '$1 == s { print $2; exit }'); echo "$1: $2 = ${v:-absent}"; [ -n "$v" ] && awk -v v="$v" -v n="$3" 'BEGIN { exit !(v >= n) }'; }
ok "(5) A's /metrics: access accept >= 1" \
  metric_ge A 'pec_milter_messages_total{role="access",outcome="accept"}' 1
ok "(5) A's /metrics: avvenuta-consegna injected >= 1" \
  metric_ge A 'pec_milter_receipts_total{kind="avvenuta-consegna",stage="injected"}' 1
ok "(5) B's /metrics: reception anomaly >= 1 (5c)" \
  metric_ge B 'pec_milter_messages_total{role="reception",outcome="anomaly"}' 1

ok "(5) A: pec-milter stops on SIGTERM with status 0" inA pec_milter_down "$W/run-A"
ok "(5) B: pec-milter stops on SIGTERM with status 0" inB pec_milter_down "$W/run-B"
for P in A B; do
  r=$(eval echo "\$R$P")
  ok "(5) $P: its key is identities.sh's (init_demo = true kept it)" cmp "$PKI/$P/provider.key" "$r/var/lib/pec-milter/demo/provider.key"
  ok "(5) $P: pec-milter log verify passes on its legal log" "$BIN" log verify "$r/var/log/pec-milter"
done
extract_has() {
  "$BIN" log extract --sender "$MARIO_V" --recipient "$ANNA_V" --date "$TS_DAY" --subject "$SUBJ_A" \
    "$RA/var/log/pec-milter" "$RB/var/log/pec-milter" > "$W/extract.txt" || { cat "$W/extract.txt"; return 1; }
  awk 'NF == 2 && $1 ~ /^20/ { print $2 }' "$W/extract.txt" | tee "$W/extract.events"
  local e
  for e in accettazione busta-trasporto presa-in-carico avvenuta-consegna; do
    grep -qx "$e" "$W/extract.events" || { echo "no $e"; return 1; }
  done
}
ok "(5a) the holder's extract across A's and B's logs: accettazione, busta, presa in carico, avvenuta consegna" extract_has

# ------------------------------------------------------------------ (6) refusals, host untouched
ok "(6) DRY_RUN=1 without PROVISION_ROOT: refused (2)" bash -c "DRY_RUN=1 bash $V/provision.sh A >/dev/null 2>&1; [ \$? = 2 ]"
ok "(6) PROVISION_ROOT without DRY_RUN=1: refused (2)" bash -c "PROVISION_ROOT=$W/x bash $V/provision.sh A >/dev/null 2>&1; [ \$? = 2 ] && [ ! -e $W/x ]"
ok "(6) an unknown provider: refused (2)" bash -c "PROVISION_ROOT=$W/y DRY_RUN=1 bash $V/provision.sh C >/dev/null 2>&1; [ \$? = 2 ] && [ ! -e $W/y ]"
ok "(6) the dry runs wrote nothing outside PROVISION_ROOT" bash -c "$(declare -f host_state); host_state | diff $W/host.before -"

_log "e2e-vagrant: $(rig_elapsed "$T0") s"
rig_finish
