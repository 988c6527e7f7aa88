#!/usr/bin/env bash
# integration/selftest.sh — proves the test rig itself works, without pec-milter:
# a netns with only lo, a Postfix instance (SASL on submission, Maildirs, milter-free
# reinjection listener, error: for everything foreign), redis-server and clamd.
# Prints "N passed, N failed" last; exit 1 if anything failed. Needs root.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

T0=$EPOCHREALTIME
rig_begin pecst
PF=$RIG_BASE/pf
MB=$PF/vmail
SUB=$RIG_SUBMIT_PORT REIN=$RIG_REINJECT_PORT

# ---- the namespace
ok "netns has only lo" bash -c "[ \"\$(ip -n $RIG_NETNS -o link show | awk -F': ' '{print \$2}')\" = lo ]"
ok "netns has no default route" bash -c "! ip -n $RIG_NETNS route show | grep -q default"
# getent exits 2 when the name does not resolve (124 would be the timeout: a DNS server that hangs)
fail "no DNS inside the netns (getent hosts example.org)" --code 2 ns_exec timeout 5 getent hosts example.org

# ---- start everything
ok "postfix instance written (postfix check)" pf_instance "$PF" || die "setup: postfix instance (giving up)"
ok "postfix started, listeners up" pf_up "$PF" || die "setup: postfix start (giving up)"
_log "postfix up after $(rig_elapsed "$T0") s"
ok "redis started" redis_up "$RIG_BASE/redis" "$RIG_REDIS_PORT" || die "setup: redis (giving up)"
_log "redis up after $(rig_elapsed "$T0") s"
ok "clamd started" clamd_up "$RIG_BASE/clamd" "$RIG_CLAMD_PORT" || die "setup: clamd (giving up)"
_log "up after $(rig_elapsed "$T0") s"

ok "submission has no milter in selftest" bash -c "postconf -c $PF/etc -P | grep -qx '127.0.0.1:$SUB/inet/smtpd_milters ='"
ok "reinjection listener has no milters" bash -c "postconf -c $PF/etc -P | grep -qx '127.0.0.1:$REIN/inet/receive_override_options = no_milters'"
ok "milter_mail_macros include {auth_authen}" bash -c "postconf -c $PF/etc -h milter_mail_macros | grep -qF '{auth_authen}'"

OUT=$RIG_BASE/out; mkdir -p "$OUT"

# ---- (a) AUTH as mario.rossi -> anna.bianchi@pec.other.test, delivered to her Maildir
swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --header "Subject: selftest a" \
  --body "selftest-token-a" > "$OUT/a.txt" 2>&1
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
# c1: unauthenticated client outside mynetworks (127.0.0.2): relay denied; local delivery still allowed
swaks_plain "$SUB" "$MARIO" someone@example.org --local-interface 127.0.0.2 > "$OUT/c1.txt" 2>&1
ok "(c1) unauthenticated relay from 127.0.0.2 refused (554 Relay access denied)" grep -qE '^<\*\* +554 5\.7\.1 .*Relay access denied' "$OUT/c1.txt"
# c2: from mynetworks (127.0.0.1) to example.org: the recipient resolves to default_transport
# = error:, so smtpd itself refuses it at RCPT: nothing is queued, no bounce, no DNS, no smtp(8)
swaks_plain "$SUB" "$MARIO" someone@example.org --header "Subject: selftest c2" > "$OUT/c2.txt" 2>&1
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

# ---- milter wiring: a milter that is down means 4xx on submission (tempfail), not on 10025
postconf -c "$PF/etc" -P "127.0.0.1:$SUB/inet/smtpd_milters=inet:127.0.0.1:$RIG_MILTER_PORT"
touch -d '-10 seconds' "$PF/etc/master.cf"   # else postfix waits ~2 s for a fresh file to settle
ns_exec postfix -c "$PF/etc" reload >/dev/null 2>&1
for _ in $(seq 40); do   # reload is asynchronous: retry until the new smtpd answers 4xx
  swaks_submit "$MARIO" "$MARIO_PW" "$MARIO" "$ANNA" --body "milter down" > "$OUT/m.txt" 2>&1 && break
  grep -qE '^<\*\* +4[0-9][0-9] ' "$OUT/m.txt" && break
  sleep 0.25
done
ok "milter down -> submission answers 4xx (milter_default_action = tempfail)" grep -qE '^<\*\* +4[0-9][0-9] ' "$OUT/m.txt"
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

# ---- the admin snippets in milter-conf/postfix/ are valid Postfix configuration: a second
# (never started) instance with its listeners replaced by master.cf.snippet and its settings
# overridden by main.cf.snippet passes `postfix check` without warnings
SN=$RIG_BASE/snippets SNIP=$RIG_ROOT/milter-conf/postfix
apply_snippets() {
  local E=$SN/etc keys
  pf_instance "$SN" || return 1
  keys=$(grep -E '^[a-z_]+ *=' "$SNIP/main.cf.snippet" | sed 's/ *=.*//' | paste -sd'|')
  { grep -vE "^($keys) *=" "$E/main.cf"; cat "$SNIP/main.cf.snippet"; } > "$E/main.new" && mv "$E/main.new" "$E/main.cf"
  { awk '/^[^ #]/ { skip = ($1 ~ /^127\.0\.0\.1:/) } !skip' "$E/master.cf"; cat "$SNIP/master.cf.snippet"; } > "$E/master.new" && mv "$E/master.new" "$E/master.cf"
  touch -d '-10 seconds' "$E/main.cf" "$E/master.cf"
  ns_exec postfix -c "$E" check 2>&1 | tee "$SN/check.out"; [ "${PIPESTATUS[0]}" = 0 ] || return 1
  ! grep -qi warn "$SN/check.out" && ! postconf -c "$E" -n 2>&1 | grep -qi warn
}
ok "milter-conf/postfix snippets: postfix check passes, no warnings" apply_snippets
ok "snippets: submission has smtpd_milters = pec-milter" bash -c "postconf -c $SN/etc -P | grep -qx 'submission/inet/smtpd_milters = inet:127.0.0.1:8891'"
ok "snippets: reinjection 127.0.0.1:10025 has no milters" bash -c "postconf -c $SN/etc -P | grep -qx '127.0.0.1:10025/inet/receive_override_options = no_milters'"
ok "snippets: milter_content_timeout = 600s, queue lifetimes 1d" bash -c "[ \"\$(postconf -c $SN/etc -h milter_content_timeout maximal_queue_lifetime bounce_queue_lifetime | paste -sd' ')\" = '600s 1d 1d' ]"

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
