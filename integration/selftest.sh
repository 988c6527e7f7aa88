#!/usr/bin/env bash
# integration/selftest.sh — proves the test rig itself works, without pec-milter:
# a netns with only lo, a Postfix instance built from milter-conf/postfix/ as shipped (MX on
# 25, STARTTLS + SASL submission with the sender-login check, milter-free reinjection
# listener; Maildirs, error: for everything foreign; no milter: the only test-only change of
# a shipped setting here), redis-server and clamd; and that a test instance differs from the
# shipped snippets only where lib.sh's "Postfix: TEST-ONLY VALUES" block says (postconf -n,
# -M, -P compared).
# Prints "N passed, N failed" last; exit 1 if anything failed. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

T0=$EPOCHREALTIME
rig_begin pecst
PF=$RIG_BASE/pf
MB=$PF/vmail
SUB=$RIG_SUBMIT_PORT REIN=$RIG_REINJECT_PORT MX=$RIG_SMTP_PORT

# ---- the namespace
ok "netns has only lo" bash -c "[ \"\$(ip -n $RIG_NETNS -o link show | awk -F': ' '{print \$2}')\" = lo ]"
ok "netns has no default route" bash -c "! ip -n $RIG_NETNS route show | grep -q default"
# getent exits 2 when the name does not resolve (124 would be the timeout: a DNS server that hangs)
fail "no DNS inside the netns (getent hosts example.org)" --code 2 ns_exec timeout 5 getent hosts example.org

# ---- start everything
ok "postfix instance written (postfix check)" pf_instance "$PF" || die "setup: postfix instance (giving up)"
cp -a "$PF/etc" "$RIG_BASE/pf-etc-as-built"   # compared with the snippets below (the milter wiring edits $PF/etc)
ok "postfix started, listeners up" pf_up "$PF" || die "setup: postfix start (giving up)"
_log "postfix up after $(rig_elapsed "$T0") s"
ok "redis started" redis_up "$RIG_BASE/redis" "$RIG_REDIS_PORT" || die "setup: redis (giving up)"
_log "redis up after $(rig_elapsed "$T0") s"
ok "clamd started" clamd_up "$RIG_BASE/clamd" "$RIG_CLAMD_PORT" || die "setup: clamd (giving up)"
_log "up after $(rig_elapsed "$T0") s"

ok "submission has no milter in selftest" bash -c "postconf -c $PF/etc -P | grep -qx '127.0.0.1:$SUB/inet/smtpd_milters ='"
ok "MX (port 25) and sendmail(1) have no milter in selftest" bash -c "postconf -c $PF/etc -P | grep -qx '127.0.0.1:$MX/inet/smtpd_milters =' && postconf -c $PF/etc -n non_smtpd_milters | grep -qx 'non_smtpd_milters ='"
ok "reinjection listener has no milters" bash -c "postconf -c $PF/etc -P | grep -qx '127.0.0.1:$REIN/inet/receive_override_options = no_milters'"
ok "milter_mail_macros include {auth_authen}" bash -c "postconf -c $PF/etc -h milter_mail_macros | grep -qF '{auth_authen}'"

OUT=$RIG_BASE/out; mkdir -p "$OUT"

# ---- (a) AUTH as mario.rossi -> anna.bianchi@pec.other.test, delivered to her Maildir
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: selftest a" \
  --body "selftest-token-a" > "$OUT/a.txt" 2>&1
ok "(a) submission ran over TLS (STARTTLS, as shipped)" grep -q '^=== TLS started' "$OUT/a.txt"
ok "(a) submission advertises AUTH PLAIN LOGIN" grep -qE '^<- +250-AUTH( [A-Z]+)*' "$OUT/a.txt"
ok "(a) AUTH PLAIN accepted (235)" grep -qE '^<- +235 ' "$OUT/a.txt"
ok "(a) message queued (250 at end of DATA)" grep -qE '^<- +250 2\.0\.0 Ok: queued' "$OUT/a.txt"
ok "(a) delivered to anna's Maildir" maildir_wait "$MB/pec.other.test/anna.bianchi" 1 10
ok "(a) body arrived intact" bash -c "grep -q selftest-token-a $MB/pec.other.test/anna.bianchi/new/*"
ok "(a) maillog shows sasl_username=$MARIO" grep -q "sasl_method=PLAIN, sasl_username=$MARIO" "$PF/maillog"

# ---- (b) wrong password -> 535, nothing queued
# swaks exits 28 when AUTH fails
fail "(b) swaks fails with a wrong password" --code 28 swaks_submit "$MARIO" wrong-pw "$MARIO" "$ANNA" --body x
swaks_submit "$MARIO" wrong-pw "$MARIO" "$ANNA" --body x > "$OUT/b.txt" 2>&1
ok "(b) AUTH refused with 535" grep -qE '^<\*\* +535 ' "$OUT/b.txt"
fail "(b) unknown user refused too" --code 28 swaks_submit nobody@pec.demo.test "$MARIO_PW" "$MARIO" "$ANNA" --body x

# ---- (c) foreign destinations never leave
# c0: the submission port as shipped refuses a client that did not start TLS
swaks_plain "$SUB" "$MARIO" "$ANNA" > "$OUT/c0.txt" 2>&1
ok "(c0) submission without STARTTLS refused (530 5.7.0)" grep -qE '^<\*\* +530 5\.7\.0 ' "$OUT/c0.txt"
# c1: unauthenticated client outside mynetworks (127.0.0.2) on the MX port: relay denied
swaks_plain "$MX" "$MARIO" someone@example.org --local-interface 127.0.0.2 > "$OUT/c1.txt" 2>&1
ok "(c1) unauthenticated relay from 127.0.0.2 refused (554 Relay access denied)" grep -qE '^<\*\* +554 5\.7\.1 .*Relay access denied' "$OUT/c1.txt"
# c1b: nobody relays through port 25 as shipped, not even mynetworks
swaks_plain "$MX" "$MARIO" someone@example.org > "$OUT/c1b.txt" 2>&1
ok "(c1b) relay from mynetworks through port 25 refused too (554 Relay access denied)" grep -qE '^<\*\* +554 5\.7\.1 .*Relay access denied' "$OUT/c1b.txt"
# c2: from loopback (127.0.0.1) to example.org on the one listener that lets loopback relay
# (reinjection): the recipient resolves to default_transport = error:, so smtpd itself refuses
# it at RCPT: nothing is queued, no bounce, no DNS, no smtp(8)
swaks_plain "$REIN" "$MARIO" someone@example.org --header "Subject: selftest c2" > "$OUT/c2.txt" 2>&1
ok "(c2) relay from mynetworks to example.org refused at RCPT by error: (550 5.7.1)" \
  grep -qE '^<\*\* +550 5\.7\.1 <someone@example\.org>: Recipient address rejected: outbound mail disabled' "$OUT/c2.txt"
# c3: the same from an authenticated holder
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" someone@example.org > "$OUT/c3.txt" 2>&1
ok "(c3) authenticated relay to example.org refused the same way" \
  grep -qE '^<\*\* +550 5\.7\.1 <someone@example\.org>' "$OUT/c3.txt"
fail "(c) nothing queued for example.org" grep -qE ': [0-9A-F]+: to=<someone@example\.org>' "$PF/maillog"
fail "(c) no smtp(8) client ever ran (nothing left the instance)" grep -qE 'postfix/(smtp|relay)\[' "$PF/maillog"
fail "(c) no DNS lookup attempted" grep -qiE 'host not found|name service error|lookup failure|Host or domain name not found' "$PF/maillog"

# ---- (d) the reinjection port 10025 delivers, without AUTH and without milters
swaks_plain "$REIN" posta-certificata@pec.demo.test "$MARIO" --header "Subject: selftest d" \
  --body "selftest-token-d" > "$OUT/d.txt" 2>&1
ok "(d) reinjection port does not offer AUTH" bash -c "! grep -qE '^<- +250-AUTH' $OUT/d.txt"
ok "(d) reinjected message queued" grep -qE '^<- +250 2\.0\.0 Ok: queued' "$OUT/d.txt"
ok "(d) reinjected message delivered to mario" maildir_wait "$MB/pec.demo.test/mario.rossi" 1 10
ok "(d) its body arrived" bash -c "grep -l selftest-token-d $MB/pec.demo.test/mario.rossi/new/* | grep -q ."
swaks_plain "$REIN" posta-certificata@pec.demo.test someone@example.org --local-interface 127.0.0.2 > "$OUT/d2.txt" 2>&1
ok "(d) reinjection port refuses foreign domains (5xx at RCPT)" grep -qE '^<\*\* +5[0-9][0-9] ' "$OUT/d2.txt"

# ---- (s) Postfix's own sender-login check as shipped (submission: pec-sender-login.regexp,
# reject_sender_login_mismatch), alone: selftest runs no milter. e2e-access (7) shows that
# pec-milter refuses the same by itself, earlier (at MAIL FROM).
swaks_submit "$CITTADINO" "$CITTADINO_PW" "$MARIO" "$ANNA" --body "not mine" > "$OUT/s.txt" 2>&1
ok "(s) cittadino logged in sending as mario: Postfix alone refuses it (553 5.7.1 not owned by user)" \
  grep -qE '^<\*\* +553 5\.7\.1 <mario\.rossi@pec\.demo\.test>: Sender address rejected: not owned by user cittadino@pec\.demo\.test' "$OUT/s.txt"
ok "(s) at RCPT TO (smtpd_delay_reject: after the milter's MAIL stage), nothing queued" \
  grep -qE 'NOQUEUE: reject: RCPT from .*: 553 5\.7\.1 <mario\.rossi@pec\.demo\.test>: Sender address rejected: not owned by user cittadino@pec\.demo\.test' "$PF/maillog"

# ---- (p) local submission: sendmail(1) -> pickup -> cleanup (non_smtpd_milters; none here)
CITT_MD=$MB/pec.demo.test/cittadino
printf 'From: <root@localhost>\nTo: <%s>\nSubject: selftest p\n\nselftest-token-p\n' "$CITTADINO" > "$OUT/p.eml"
ok "(p) sendmail(1) accepts a local message for cittadino" ns_exec /usr/sbin/sendmail -C "$PF/etc" -f root@localhost "$CITTADINO" < "$OUT/p.eml"
ok "(p) delivered to cittadino (no milter in selftest)" maildir_wait "$CITT_MD" 1 10

# ---- milter wiring: a milter that is down means 4xx on the MX and submission ports and local
# mail held (milter_default_action = tempfail), not on 10025. The milter goes where the
# snippets ship it: smtp and submission smtpd_milters, non_smtpd_milters.
postconf -c "$PF/etc" -P "127.0.0.1:$SUB/inet/smtpd_milters=inet:127.0.0.1:$RIG_MILTER_PORT" \
  "127.0.0.1:$MX/inet/smtpd_milters=inet:127.0.0.1:$RIG_MILTER_PORT"
postconf -c "$PF/etc" -e "non_smtpd_milters = inet:127.0.0.1:$RIG_MILTER_PORT"
touch -d '-10 seconds' "$PF/etc/master.cf" "$PF/etc/main.cf"   # else postfix waits ~2 s for a fresh file to settle
ns_exec postfix -c "$PF/etc" reload >/dev/null 2>&1
for _ in $(seq 40); do   # reload is asynchronous: retry until the new smtpd answers 4xx
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --body "milter down" > "$OUT/m.txt" 2>&1 && break
  grep -qE '^<\*\* +4[0-9][0-9] ' "$OUT/m.txt" && break
  sleep 0.25
done
ok "milter down -> submission answers 4xx (milter_default_action = tempfail)" grep -qE '^<\*\* +4[0-9][0-9] ' "$OUT/m.txt"
swaks_plain "$MX" posta-certificata@pec.other.test "$MARIO" --body "milter down mx" > "$OUT/m3.txt" 2>&1
ok "milter down -> the MX (port 25) answers 4xx" grep -qE '^<\*\* +4[0-9][0-9] ' "$OUT/m3.txt"
printf 'From: <root@localhost>\nTo: <%s>\nSubject: selftest p2\n\nselftest-token-p2\n' "$CITTADINO" > "$OUT/p2.eml"
ok "milter down -> sendmail(1) still takes the message (into the maildrop)" ns_exec /usr/sbin/sendmail -C "$PF/etc" -f root@localhost "$CITTADINO" < "$OUT/p2.eml"
held() {   # cleanup refused it for now (milter tempfail), it waits in the maildrop for pickup's retry
  local i
  for ((i = 0; i < 100; i++)); do
    grep -qE 'postfix/cleanup\[[0-9]+\]: [0-9A-F]+: milter-reject: CONNECT from localhost\[127\.0\.0\.1\]: 4\.7\.1 .*from=<root@localhost>' "$PF/maillog" &&
      [ -n "$(find "$PF/spool/maildrop" -type f)" ] && return 0
    sleep 0.1
  done
  tail -n 5 "$PF/maillog"; find "$PF/spool/maildrop" -type f; return 1
}
ok "milter down -> local mail held: cleanup tempfails it (non_smtpd_milters), it stays in the maildrop" held
ok "milter down -> nothing of it reached cittadino" maildir_wait "$CITT_MD" 1 1
swaks_plain "$REIN" posta-certificata@pec.demo.test "$MARIO" --body "selftest-token-m" > "$OUT/m2.txt" 2>&1
ok "milter down -> reinjection port still delivers" maildir_wait "$MB/pec.demo.test/mario.rossi" 2 10
ok "nothing from the tempfailed submission reached anna" maildir_wait "$MB/pec.other.test/anna.bianchi" 1 1

# ---- (e) redis
ok "(e) redis-cli PING -> PONG" bash -c "[ \"\$(ip netns exec $RIG_NETNS redis-cli -h 127.0.0.1 -p $RIG_REDIS_PORT PING)\" = PONG ]"

# ---- (f) clamd finds EICAR (clamdscan --stream = zINSTREAM over TCP, as the milter does)
C=$RIG_BASE/clamd
printf 'just a clean text\n' > "$OUT/clean.txt"
{
  printf 'From: %s\nTo: %s\nSubject: eicar\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n\n' "$MARIO" "$ANNA"
  printf -- '--b1\nContent-Type: text/plain\n\nsee attachment\n--b1\nContent-Type: application/octet-stream; name="e.com"\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename="e.com"\n\n'
  eicar_string | base64
  printf -- '--b1--\n'
} > "$OUT/eicar-mail.eml"
ok "(f) clamdscan: EICAR file FOUND" bash -c "ip netns exec $RIG_NETNS clamdscan --config-file=$C/clamd.conf --stream --no-summary $C/eicar.com | grep -q 'PEC.Test.EICAR.*FOUND'"
ok "(f) clamdscan: EICAR base64 attachment in a mail FOUND" bash -c "ip netns exec $RIG_NETNS clamdscan --config-file=$C/clamd.conf --stream --no-summary $OUT/eicar-mail.eml | grep -q 'FOUND'"
ok "(f) clamdscan: clean file OK" ns_exec clamdscan --config-file="$C/clamd.conf" --stream --no-summary "$OUT/clean.txt"
ok "(f) raw zINSTREAM over bash /dev/tcp: EICAR FOUND" bash -c "$(declare -f ns_exec clamd_instream); RIG_NETNS=$RIG_NETNS; clamd_instream $C/eicar.com $RIG_CLAMD_PORT | grep -q 'stream: PEC.Test.EICAR.* FOUND'"
ok "(f) raw zINSTREAM: clean file OK" bash -c "$(declare -f ns_exec clamd_instream); RIG_NETNS=$RIG_NETNS; clamd_instream $OUT/clean.txt $RIG_CLAMD_PORT | grep -qx 'stream: OK'"

# ---- the admin snippets in milter-conf/postfix/ as shipped: what they wire
SHIP=$RIG_BASE/shipped SNIP=$RIG_PF_SHIPPED TOML=$RIG_ROOT/milter-conf/pec-milter.toml
mkdir -p "$SHIP" && cp "$SNIP/main.cf.snippet" "$SHIP/main.cf" && cp "$SNIP/master.cf.snippet" "$SHIP/master.cf"
# postconf, like postfix, waits ~2 s for a config file younger than 2 s to settle: backdate them
touch -d '-10 seconds' "$SHIP"/*.cf
shipped_p() { postconf -c "$SHIP" -P | grep -qxF -- "$1"; }
shipped_n() { postconf -c "$SHIP" -n | grep -qxF -- "$1"; }
ok "snippets: submission has smtpd_milters = pec-milter" shipped_p 'submission/inet/smtpd_milters = inet:127.0.0.1:8891'
ok "snippets: reinjection 127.0.0.1:10025 has no milters" shipped_p '127.0.0.1:10025/inet/receive_override_options = no_milters'
ok "snippets: milter_content_timeout = 600s, queue lifetimes 1d" bash -c "[ \"\$(postconf -c $SHIP -h milter_content_timeout maximal_queue_lifetime bounce_queue_lifetime | paste -sd' ')\" = '600s 1d 1d' ]"
ok "snippets: milter_default_action = tempfail" shipped_n 'milter_default_action = tempfail'
ok "snippets: smtp (port 25) has smtpd_milters = pec-milter (reception point)" shipped_p 'smtp/inet/smtpd_milters = inet:127.0.0.1:8891'
ok "snippets: smtp (port 25) has no AUTH and relays for nobody" bash -c \
  "postconf -c $SHIP -P | grep -qxF 'smtp/inet/smtpd_sasl_auth_enable = no' && postconf -c $SHIP -P | grep -qxF 'smtp/inet/smtpd_relay_restrictions = reject_unauth_destination'"
ok "snippets: sendmail(1)/pickup through pec-milter (non_smtpd_milters)" shipped_n 'non_smtpd_milters = inet:127.0.0.1:8891'
ok "snippets: PEC domains delivered over LMTP to the delivery point" shipped_n 'virtual_transport = lmtp:inet:127.0.0.1:2424'
ok "snippets: submission has the sender-login check, its regexp map shipped" bash -c \
  "postconf -c $SHIP -P | grep -qxF 'submission/inet/smtpd_sender_restrictions = reject_sender_login_mismatch' && postconf -c $SHIP -P | grep -qxF 'submission/inet/smtpd_sender_login_maps = regexp:\$config_directory/pec-sender-login.regexp' && test -s $SNIP/pec-sender-login.regexp"
ok "snippets agree with pec-milter.toml ([milter] listen, [reinjection] address, [delivery] listen)" bash -c \
  "grep -qx 'listen = \"inet:127.0.0.1:8891\"' $TOML && grep -qx 'address = \"127.0.0.1:10025\"' $TOML && grep -qx 'listen = \"inet:127.0.0.1:2424\"' $TOML"

# ---- a test instance is the snippets as shipped plus lib.sh's "Postfix: TEST-ONLY VALUES":
# its postconf -n / -M / -P compared with the snippets'.
_in() { [[ " $(echo $2) " == *" $1 "* ]]; }   # _in WORD LIST: WORD is an item of the blank-separated LIST
# the main.cf settings of lib.sh's block (b), whatever pf_instance's keys
site_names() {
  ( INBOUND=127.0.0.1:1 SUBMIT=127.0.0.1:2 REINJECT=127.0.0.1:3 HOST=h DOMAINS=d MYNETWORKS=m
    _pf_site_main_cf /x ) | sed -n 's/^\([a-z0-9_]*\) *=.*/\1/p' | sort -u
}
# _params PREFIX: the `postconf -P` lines (stdin) of service PREFIX (name/type), as "param = value"
_params() { awk -v p="$1/" 'index($0, p) == 1 { print substr($0, length(p) + 1) }'; }
# _fields ETC NAME/TYPE: the service's master.cf fields but its name, the command without its -o's
_fields() { postconf -c "$1" -F "$2" | _params "$2" | grep -v '^service = ' | sed 's/^\(command = [^ ]*\).*/\1/'; }
# pf_vs_shipped ETC INBOUND SUBMIT REINJECT: prints every difference between the instance whose
# config directory is ETC (its shipped services at the given listen addresses) and the snippets;
# exit 0 when each one is a documented test-only value (lib.sh (a), (b), (c)), else 1.
pf_vs_shipped() {
  local E=$1 rc=0 line k svc addr tsvc want have tP sP site ship_names
  local -A tn
  if postconf -c "$E" -n 2>&1 >/dev/null | grep .; then echo "postconf -n warns (above)"; rc=1; fi
  # (config_directory is the directory postconf -c names: not a setting of either)
  while IFS= read -r line; do tn[${line%% =*}]=$line; done < <(postconf -c "$E" -n 2>/dev/null | grep -v '^config_directory =')
  ship_names=$(postconf -c "$SHIP" -n | grep -v '^config_directory =' | sed 's/ =.*//')
  site=$(site_names)
  # (1) every main.cf setting of the snippet, as shipped, unless lib.sh (a) changes it
  while IFS= read -r line; do
    k=${line%% =*}
    [ "${tn[$k]-}" = "$line" ] && continue
    if _in "$k" "$RIG_PF_MAIN_OVERRIDES"; then echo "test-only (a): ${tn[$k]-$k: unset}   [shipped: $line]"; continue; fi
    echo "DIFFERS from main.cf.snippet: ${tn[$k]-$k: unset}   [shipped: $line]"; rc=1
  done < <(postconf -c "$SHIP" -n | grep -v '^config_directory =')
  # (2) every other main.cf setting is one of lib.sh (b); (b) never sets a shipped one
  for k in "${!tn[@]}"; do
    _in "$k" "$ship_names" && continue
    _in "$k" "$site" || { echo "NOT IN THE SNIPPET nor in lib.sh (b): ${tn[$k]}"; rc=1; }
  done
  for k in $site; do _in "$k" "$ship_names" && { echo "lib.sh (b) sets a shipped setting: $k"; rc=1; }; done
  # (3) each shipped service at its test listen address: the same fields and -o settings,
  # unless lib.sh (a) changes the setting
  tP=$(postconf -c "$E" -P) sP=$(postconf -c "$SHIP" -P)
  while read -r svc addr; do
    tsvc=$addr/${svc#*/}
    [ "$svc" = "$tsvc" ] || echo "test-only (a): $svc listens on $addr"
    if [ -z "$(postconf -c "$E" -M "$tsvc" 2>/dev/null)" ]; then echo "MISSING: shipped service $svc (as $tsvc)"; rc=1; continue; fi
    want=$(_fields "$SHIP" "$svc") have=$(_fields "$E" "$tsvc")
    [ "$want" = "$have" ] || { echo "DIFFERS: fields of $svc: shipped [$(echo $want)] test [$(echo $have)]"; rc=1; }
    local -A wp=() hp=()
    while IFS= read -r line; do [ -n "$line" ] && wp[${line%% =*}]=$line; done < <(_params "$svc" <<< "$sP")
    while IFS= read -r line; do [ -n "$line" ] && hp[${line%% =*}]=$line; done < <(_params "$tsvc" <<< "$tP")
    for k in "${!wp[@]}"; do
      [ "${hp[$k]-}" = "${wp[$k]}" ] && continue
      if _in "$k" "$RIG_PF_MASTER_OVERRIDES"; then echo "test-only (a): $tsvc -o ${hp[$k]-$k: unset}   [shipped: ${wp[$k]}]"; continue; fi
      echo "DIFFERS: $svc -o ${wp[$k]} shipped, test: ${hp[$k]-$k: unset}"; rc=1
    done
    for k in "${!hp[@]}"; do [ -n "${wp[$k]+set}" ] || { echo "ADDED to $svc: -o ${hp[$k]}"; rc=1; }; done
  done < <(_pf_services "$2" "$3" "$4")
  # (4) the snippet's services are those lib.sh places (_pf_services); every other service of
  # the instance is one of Postfix's own, exactly as lib.sh (c) writes them
  local C other ours
  want=$(postconf -c "$SHIP" -M | awk '{ print $1 "/" $2 }') have=$(_pf_services - - - | awk '{ print $1 }')
  [ "$want" = "$have" ] || { echo "DIFFERS: master.cf.snippet has [$(echo $want)], lib.sh _pf_services places [$(echo $have)]"; rc=1; }
  ours=$(_pf_services "$2" "$3" "$4" | awk '{ split($1, a, "/"); print $2 "/" a[2] }')
  C=$(mktemp -d); : > "$C/main.cf"; pf_debian_services > "$C/master.cf"; touch -d '-10 seconds' "$C"/*.cf
  other=$(postconf -c "$E" -M | while IFS= read -r line; do
    read -r svc k _ <<< "$line"; _in "$svc/$k" "$ours" || printf '%s\n' "$line"; done)
  if [ "$other" != "$(postconf -c "$C" -M)" ]; then
    echo "DIFFERS: the services other than the shipped ones are not lib.sh (c):"; diff <(postconf -c "$C" -M) <(printf '%s\n' "$other"); rc=1
  fi
  rm -rf "$C"
  return "$rc"
}
DEF=("127.0.0.1:$MX" "127.0.0.1:$SUB" "127.0.0.1:$REIN")   # pf_instance's default listen addresses
ok "selftest's instance = the snippets + documented test-only values (no milter)" pf_vs_shipped "$RIG_BASE/pf-etc-as-built" "${DEF[@]}"
# an instance as the e2e scripts build it (e2e-access, e2e-reception, e2e-hsm), never started
SN=$RIG_BASE/snippets
ok "an instance as the e2e scripts build it (MILTERS = the shipped address)" pf_instance "$SN" MILTERS="inet:127.0.0.1:$RIG_MILTER_PORT"
snippet_check() {
  ns_exec postfix -c "$SN/etc" check 2>&1 | tee "$SN/check.out"; [ "${PIPESTATUS[0]}" = 0 ] || return 1
  ! grep -qi warn "$SN/check.out" && ! postconf -c "$SN/etc" -n 2>&1 | grep -qi warn
}
ok "milter-conf/postfix snippets: postfix check passes, no warnings" snippet_check
ok "e2e instance = the snippets + documented test-only values" pf_vs_shipped "$SN/etc" "${DEF[@]}"
# ... and as e2e-two-providers builds it: the MX on a veth address, the shipped delivery point
SN2=$RIG_BASE/snippets2
ok "an instance as e2e-two-providers builds it (never started)" pf_instance "$SN2" MILTERS="inet:127.0.0.1:$RIG_MILTER_PORT" \
  INBOUND=127.0.0.1:2525 VTRANSPORT=lmtp:inet:127.0.0.1:2424 TRANSPORT="pec.other.test smtp:[127.0.0.2]:25"
ok "two-providers instance = the snippets + documented test-only values" pf_vs_shipped "$SN2/etc" 127.0.0.1:2525 "${DEF[@]:1}"
# the comparison itself: an undocumented difference fails it (each on a copy of the e2e instance)
tampered() {   # tampered NAME POSTCONF-ARGS...: a copy of $SN/etc edited with postconf
  local T=$RIG_BASE/tamper-$1; shift
  rm -rf "$T"; cp -a "$SN/etc" "$T" && postconf -c "$T" "$@" && touch -d '-10 seconds' "$T"/*.cf || return 2
  pf_vs_shipped "$T" "${DEF[@]}"
}
fail "rig: comparison fails on submission without TLS (-o smtpd_tls_security_level=none)" tampered tls -P -e "127.0.0.1:$SUB/inet/smtpd_tls_security_level=none"
fail "rig: comparison fails on submission without the sender-login check" tampered slm -P -X "127.0.0.1:$SUB/inet/smtpd_sender_restrictions"
fail "rig: comparison fails on milter_default_action = accept" tampered mda -e "milter_default_action = accept"
fail "rig: comparison fails on a shipped setting removed (disable_mime_output_conversion)" tampered dmoc -X disable_mime_output_conversion
fail "rig: comparison fails on a setting neither shipped nor documented (smtpd_delay_reject = no)" tampered sdr -e "smtpd_delay_reject = no"
fail "rig: comparison fails on the MX chrooted" tampered chroot -F -e "127.0.0.1:$MX/inet/chroot=y"
# ---- the rig's own assertions: a check that could not run is not a pass, a *_down passes
# only when its daemon really stopped
# counts_are "P F" CMD...: CMD (ok/fail calls) in a subshell with fresh counters adds P passes, F failures.
counts_are() { local c; c=$( (RIG_PASSED=0 RIG_FAILED=0; "${@:2}" >/dev/null; echo "$RIG_PASSED $RIG_FAILED") ); echo "got: $c"; [ "$c" = "$1" ]; }
ok "rig: fail passes on exit 1 (grep finds nothing)" counts_are "1 0" fail x grep -q no-such-text "$PF/etc/main.cf"
ok "rig: fail does not pass on exit 2 (grep of a missing file)" counts_are "0 1" fail x grep -q x "$RIG_BASE/no-such-file"
ok "rig: fail does not pass on exit 127 (command not found)" counts_are "0 1" fail x no-such-command-pec-milter
ok "rig: fail does not pass on exit 0" counts_are "0 1" fail x true
ok "rig: fail --code 28 passes on 28 only" counts_are "1 2" eval 'fail x --code 28 bash -c "exit 28"; fail y --code 28 false; fail z --code 28 true'
# a stale pid file while something still listens on the port: redis_down must not pass
FK=$RIG_BASE/fake; mkdir -p "$FK"
ip netns exec "$RIG_NETNS" python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 6390)); s.listen(); time.sleep(60)' &
FKL=$!
bash -c 'exit 0' & FKP=$!; wait "$FKP"; echo "$FKP" > "$FK/redis.pid"; echo 6390 > "$FK/redis.port"
ok "rig: fake listener on 6390" wait_port 127.0.0.1 6390 5
fail "rig: redis_down fails while its port is still open (stale pid file)" redis_down "$FK"
kill "$FKL"; wait "$FKL" 2>/dev/null
ok "rig: redis_down passes once the port is closed" redis_down "$FK"
# pec_milter_down: only a child that exits 0 on SIGTERM is a clean stop
bash -c 'trap "exit 0" TERM; while :; do sleep 0.05; done' & echo $! > "$FK/pec-milter.pid"
ok "rig: pec_milter_down passes when the process exits 0 on SIGTERM" pec_milter_down "$FK"
bash -c 'trap "exit 127" TERM; while :; do sleep 0.05; done' & echo $! > "$FK/pec-milter.pid"
fail "rig: pec_milter_down fails when the process exits 127 on SIGTERM" pec_milter_down "$FK"
bash -c 'exit 0' & FKP=$!; sleep 0.2; echo "$FKP" > "$FK/pec-milter.pid"
fail "rig: pec_milter_down fails when the process had exited before it was asked to stop" pec_milter_down "$FK"

# ---- (t) the RFC 3161 TSA of lib.sh (tsa_*): openssl ts behind an HTTP handler in the netns.
# A token verifies for the file it stamps and for no other; a stopped TSA does not answer, and
# starts again on the same port. Before the teardown: its checks want the netns empty.
TSA=$RIG_BASE/tsa
ok "(t) TSA PKI + openssl ts config (a sample reply verifies)" tsa_pki "$TSA"
ok "(t) TSA started on 127.0.0.1:$RIG_TSA_PORT" tsa_up "$TSA" "$RIG_TSA_PORT"
printf 'selftest-token-t\n' > "$OUT/t.txt"
ok "(t) a token for a file, over HTTP, verifies (tsa_stamp_file)" tsa_stamp_file "$OUT/t.txt" "$TSA" "$RIG_TSA_PORT" "$OUT/t.tsr"
sed 's/t$/u/' "$OUT/t.txt" > "$OUT/t-changed.txt"   # one byte changed
fail "(t) the token does not verify for the file with one byte changed" tsa_verify "$OUT/t.tsr" "$OUT/t-changed.txt" "$TSA"
tsa_status_is() { local s; s=$(tsa_post "${@:2}"); echo "$s"; [[ $s == "HTTP $1 "* ]]; }   # tsa_status_is CODE TSA_POST-ARGS...
ok "(t) another content type -> 400" tsa_status_is 400 "$RIG_TSA_PORT" "$OUT/t.tsr.tsq" "$OUT/t-400" text/plain
ok "(t) GET -> 405" tsa_status_is 405 "$RIG_TSA_PORT" "$OUT/t.tsr.tsq" "$OUT/t-405" application/timestamp-query GET
mv "$TSA/tsa.key" "$TSA/tsa.key.off"   # openssl ts -reply cannot sign
ok "(t) openssl failing -> 500" tsa_status_is 500 "$RIG_TSA_PORT" "$OUT/t.tsr.tsq" "$OUT/t-500"
mv "$TSA/tsa.key.off" "$TSA/tsa.key"
ok "(t) tsa.log: one line per request, with its status" bash -c \
  "[ \"\$(grep -oE 'status=[0-9]+' $TSA/tsa.log | paste -sd' ')\" = 'status=200 status=400 status=405 status=500' ]"
ok "(t) TSA stops (process gone, port closed)" tsa_down "$TSA"
fail "(t) TSA down: no answer (tsa_stamp_file exit 2)" --code 2 tsa_stamp_file "$OUT/t.txt" "$TSA" "$RIG_TSA_PORT" "$OUT/t2.tsr"
ok "(t) TSA up again on the same port" tsa_up "$TSA" "$RIG_TSA_PORT"
ok "(t) ... and stamps again" tsa_stamp_file "$OUT/t.txt" "$TSA" "$RIG_TSA_PORT" "$OUT/t3.tsr"
ok "(t) TSA stops again" tsa_down "$TSA"

# ---- teardown, checked
NS=$RIG_NETNS
ok "postfix stops" pf_down "$PF"
ok "redis stops" redis_down "$RIG_BASE/redis"
ok "clamd stops" clamd_down "$RIG_BASE/clamd"
ok "no process left in the netns" bash -c "[ -z \"\$(ip netns pids $NS)\" ]"
ok "netns removed" netns_down "$NS"
fail "netns gone" bash -c "ip netns list | awk '{print \$1}' | grep -qx $NS"
_log "selftest took $(rig_elapsed "$T0") s"
rig_finish
