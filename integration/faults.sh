#!/usr/bin/env bash
# integration/faults.sh [--quick] — the fault matrix (issue 16). One pec-milter (access point and
# reception point, Redis state, clamd, providers' index from slapd, outbox pass every second) in a
# network namespace with only lo, driven at protocol level by examples/milter_load (no MTA):
# per row, a load of N submissions (mario -> anna, with {auth_authen}: the access point) and N
# inbound envelopes signed by provider B (without it: the reception point) runs while one fault is
# applied and then undone. The load behaves as an MTA's queue: what gets 4xx or a dropped
# connection is sent again, the same bytes (`milter_load --retry-tempfail`). Receipts are
# reinjected into an smtp-sink that keeps every message.
#
# Rows (one fault each, in this order):
#   kill9      SIGKILL of pec-milter at a random moment of the load, started again at once
#   redis      Redis (the state store) stopped for HOLD s, started again (its AOF keeps the data)
#   clamd      clamd stopped for HOLD s, started again
#   slapd      slapd (the providers' index, refreshed every 2 s) stopped for HOLD s: the reception
#              point keeps its last good copy (or answers 4xx), slapd started again
#   reinject   the reinjection listener (the receipts' sink) stopped for HOLD s: submissions are
#              accepted, their receipts wait in the outbox; started again, the outbox pass sends them
#   hsm        pec-milter restarted on the SoftHSM2 token; the token removed for HOLD s, restored
#   logfull    the legal log's filesystem (a tmpfs) filled and the current file closed (SIGUSR1)
#              for HOLD s, then room again
#   (Sentinel failover: integration/e2e-sentinel.sh)
# After each row the load has ended and the outbox is empty. At the end (pec-milter stopped):
#   - access: every accepted submission got one envelope (the milter replaced the body), one
#     envelope record in the state store, one accettazione at the sink (lost = 0);
#   - reception: every accepted envelope got one presa in carico at the sink (lost = 0);
#   - delivery (the same envelopes over LMTP, integration/faults_lmtp.py, Maildir store): every
#     accepted one stored and one avvenuta consegna at the sink (lost = 0);
#   - every receipt at the sink is signed and verifies (`pec-milter inspect --json --trust`);
#   - the legal log has each accettazione / presa in carico once; `pec-milter log verify` passes;
#   - duplicates (the same receipt, same Message-ID, twice: the one documented window of the
#     outbox) are counted and reported, not failed.
# The table (fault x role: sent, accepted, envelopes, receipts, duplicates, lost, retried) is
# printed and written to RELIABILITY.md (full run) or target/RELIABILITY-quick.md (--quick);
# FAULTS_REPORT=path overrides, FAULTS_REPORT= writes none.
# --quick: N=150 per role and row (CI, < 4 min); default N=1000. Env: FAULTS_N, FAULTS_ROWS
# ("kill9 redis ..."), HOLD (s, default 3), PEC_MILTER_BIN, MILTER_LOAD, KEEP=1.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/softhsm.sh"

QUICK=0
for a in "$@"; do
  case $a in --quick) QUICK=1 ;; *) echo "usage: $0 [--quick]" >&2; exit 2 ;; esac
done
if [ "$QUICK" = 1 ]; then N=${FAULTS_N:-150}; else N=${FAULTS_N:-1000}; fi
HOLD=${HOLD:-3}
# each role's load paced (messages/s) so that it runs before, during and after the fault
if [ "$QUICK" = 1 ]; then RATE=${FAULTS_RATE:-30}; else RATE=${FAULTS_RATE:-40}; fi
ROWS=${FAULTS_ROWS:-kill9 redis clamd slapd reinject hsm logfull}
# the full run writes the committed report; a quick run (CI) its own, under target/
if [ "$QUICK" = 1 ]; then REPORT=${FAULTS_REPORT-$RIG_ROOT/target/RELIABILITY-quick.md}
else REPORT=${FAULTS_REPORT-$RIG_ROOT/RELIABILITY.md}; fi
BIN=$(pec_milter_bin)
LOAD=${MILTER_LOAD:-$RIG_ROOT/target/debug/examples/milter_load}
rig_begin pecflt
T0=$EPOCHREALTIME
need_pec_milter run envelope inspect init-demo index-entry
# `cargo test --all-targets` compiles the examples without placing them here; an older build
# lacks --retry-tempfail
has_retry() { local h; h=$("$LOAD" --help 2>&1); [[ $h == *--retry-tempfail* ]]; }
if ! has_retry; then
  [ -z "${MILTER_LOAD:-}" ] && (cd "$RIG_ROOT" && cargo build --locked --example milter_load >/dev/null 2>&1)
fi
has_retry || die "$LOAD missing or without --retry-tempfail"
for t in redis-server redis-cli clamd slapd smtp-sink softhsm2-util pkcs11-tool python3; do
  command -v "$t" >/dev/null || die "$t missing (integration/deps.sh)"
done

W=$RIG_BASE D=$RIG_BASE/pec B=$RIG_BASE/b SINK=$RIG_BASE/sink
SINK_PORT=10026 DX_PORT=2424
mkdir -p "$D" "$B" "$SINK" "$W/rec" "$W/out" "$W/rx" && chmod 777 "$SINK"
rcli() { ns_exec redis-cli -p "$RIG_REDIS_PORT" "$@"; }

# ------------------------------------------------------------------ the components, startable again
# the receipts' sink keeps each message (smtp-sink -d: one file per transaction)
sink_up() {
  ip netns exec "$RIG_NETNS" smtp-sink -u nobody -d "$SINK/m." "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 &
  echo $! > "$W/sink.pid"
  wait_port 127.0.0.1 "$SINK_PORT" 10
}
sink_down() { _kill_pidfile "$W/sink.pid" 5 && wait_closed 127.0.0.1 "$SINK_PORT" 5; }
# Redis with its append-only file: a stop and start keeps the claims, records and outbox
redis_start() {
  mkdir -p "$W/redis"
  ns_exec redis-server --port "$RIG_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
    --appendfsync everysec --dir "$W/redis" --daemonize yes --pidfile "$W/redis/redis.pid" \
    --logfile "$W/redis/redis.log" || return 1
  echo "$RIG_REDIS_PORT" > "$W/redis/redis.port"
  wait_port 127.0.0.1 "$RIG_REDIS_PORT" 10 || return 1
  # PONG once the append-only file is loaded (until then it answers LOADING)
  local i
  for ((i = 0; i < 200; i++)); do [ "$(rcli ping 2>&1)" = PONG ] && return 0; sleep 0.05; done
  echo "redis_start: no PONG: $(rcli ping 2>&1)" >&2; return 1
}
# slapd again on its existing database (slapd_up would slapadd the entries once more)
slapd_start() {
  ip netns exec "$RIG_NETNS" slapd -f "$W/slapd/slapd.conf" -h "ldap://127.0.0.1:$RIG_LDAP_PORT/" -d stats \
    >>"$W/slapd/slapd.log" 2>&1 &
  echo $! > "$W/slapd/slapd.pid"
  _wait_listening slapd "$(cat "$W/slapd/slapd.pid")" "$RIG_LDAP_PORT" "$W/slapd/slapd.log"
}
pec_pid() { cat "$D/pec-milter.pid"; }

ok "smtp-sink keeping the receipts on 127.0.0.1:$SINK_PORT" sink_up || rig_finish
rig_defer sink_down
ok "Redis up (append-only file)" redis_start || rig_finish
rig_defer redis_down "$W/redis"
ok "clamd up" clamd_up "$W/clamd" "$RIG_CLAMD_PORT" || rig_finish

# provider B: identity, the providers' index (B) in slapd
printf '[provider]\nname = "Beta PEC S.p.A."\ndomain = "pec.other.test"\ndomains = ["pec.other.test"]\n[signing]\nkey = "%s/provider.key"\ncert = "%s/provider.crt"\n' \
  "$B" "$B" > "$B/id.toml"
ok "provider B identity (init-demo)" "$BIN" init-demo --config "$B/id.toml" || rig_finish
{
  igpec_root_entry
  "$BIN" index-entry --cert "$B/provider.crt" --name "Beta PEC S.p.A." --domains pec.other.test \
    --receipt ricevute@pec.other.test
} > "$W/igpec.ldif"
ok "slapd up with the providers' index" slapd_up "$W/slapd" "$RIG_LDAP_PORT" "$W/igpec.ldif" || rig_finish

# the SoftHSM2 token of the hsm row: a key generated inside it, a certificate from its own CA
HSMCA=$W/hsmca LABEL=pec-faults
mkdir -p "$HSMCA"
hsm_setup() {
  hsm_env "$W/softhsm" && hsm_token "$LABEL" && hsm_keygen "$LABEL" >/dev/null &&
    hsm_test_ca "$HSMCA" "Demo PEC S.p.A." && hsm_issue_cert "$HSMCA" "$LABEL" "Demo PEC S.p.A." pec.demo.test
}
ok "SoftHSM2 token with an RSA key generated inside it, certified by its own CA" hsm_setup || rig_finish
printf '%s\n' "$HSM_PIN" > "$W/pin"; chmod 600 "$W/pin"

# pec-milter: Redis state, index from slapd refreshed every 2 s, receipts to the sink, the outbox
# pass every second for receipts older than 3 s, the legal log on a tmpfs of its own
INDEX=ldap INDEX_REFRESH=2s INDEX_TIMEOUT=2s TRUST="$B/ca.pem" ok "config written" write_config "$D" redis || rig_finish
sed -i -e "s#^listen = .*#listen = \"unix:$D/pec.sock\"#" \
  -e "s#^address = \"127.0.0.1:$RIG_REINJECT_PORT\"#address = \"127.0.0.1:$SINK_PORT\"#" \
  -e 's#^timeout = "30s"#timeout = "2s"\noutbox_interval = "1s"\noutbox_grace = "3s"#' "$D/pec-milter.toml"
# the delivery point: LMTP on $DX_PORT, the embedded Maildir store, its receipts' outbox on disk
mkdir -p "$D/mail/pec.demo.test/${MARIO%@*}" "$D/outbox"
printf '\n[delivery]\nlisten = "inet:127.0.0.1:%s"\nstore = "maildir"\nmaildir = "%s/mail"\noutbox = "%s/outbox"\n\n[timers]\nenabled = false\n' \
  "$DX_PORT" "$D" "$D" >> "$D/pec-milter.toml"
cp "$D/pec-milter.toml" "$D/pec-milter-hsm.toml"
hsm_config "$D/pec-milter-hsm.toml" "$W/pin" "$LABEL"
ok "config checks" "$BIN" check-config --config "$D/pec-milter.toml" || rig_finish
ok "config (pkcs11) checks" "$BIN" check-config --config "$D/pec-milter-hsm.toml" || rig_finish
mkdir -p "$D/log"
ok "the legal log's directory on a 64 MiB tmpfs" mount -t tmpfs -o size=64m pecfaultlog "$D/log" || rig_finish
rig_defer umount "$D/log"
ok "pec-milter up" pec_milter_up "$D" "$D/pec-milter.toml" || rig_finish
ok "its delivery point listens (LMTP 127.0.0.1:$DX_PORT)" wait_port 127.0.0.1 "$DX_PORT" 10 || rig_finish
CA=$D/demo/ca.pem

# provider B's envelopes to mario, N distinct ones per row (two `pec-milter envelope` at a time)
make_envelopes() { # ROW
  local dir=$W/rx/$1 i
  mkdir -p "$dir/orig"
  for ((i = 0; i < N; i++)); do
    printf 'From: <luigi.verdi@pec.other.test>\r\nTo: <%s>\r\nSubject: inbound %s %s\r\nMessage-ID: <in.%s.%s.%s@client.pec.other.test>\r\nDate: Mon, 01 Dec 2025 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nfault row %s message %s\r\n' \
      "$MARIO" "$1" "$i" "$1" "$i" "$$" "$1" "$i" > "$dir/orig/$(printf '%06d' "$i")"
  done
  find "$dir/orig" -type f -printf '%f\n' | sort | xargs -P 2 -I{} sh -c \
    "\"$BIN\" envelope --key \"$B/provider.key\" --cert \"$B/provider.crt\" --gestore 'Beta PEC S.p.A.' \
       --domain pec.other.test --certified pec.demo.test --id \"opec.$1.{}.$$@pec.other.test\" \"$dir/orig/{}\" > \"$dir/{}.eml\""
  rm -rf "$dir/orig"
  [ "$(find "$dir" -maxdepth 1 -name '*.eml' -size +1k | wc -l)" -eq "$N" ]
}
t=$EPOCHREALTIME
for row in $ROWS; do
  ok "$N envelopes of provider B for row $row" make_envelopes "$row" || rig_finish
done
_log "envelopes made in $(rig_elapsed "$t") s"

# ------------------------------------------------------------------ the faults
declare -A WHAT OBS
WHAT[kill9]="SIGKILL of pec-milter at a random moment of the load; started again on the same state and log"
WHAT[redis]="Redis (state store) stopped (SIGTERM) for ${HOLD} s, started again on its append-only file"
WHAT[clamd]="clamd stopped for ${HOLD} s, started again"
WHAT[slapd]="slapd (providers' index, refresh 2 s) stopped for ${HOLD} s, started again"
WHAT[reinject]="reinjection listener (receipts' smtp-sink) stopped for ${HOLD} s, started again; the outbox pass (1 s, grace 3 s) sends what waited"
WHAT[hsm]="pec-milter restarted on the SoftHSM2 key; the token deleted for ${HOLD} s, restored (same files)"
WHAT[logfull]="legal log's tmpfs filled and the current file closed (SIGUSR1) for ${HOLD} s, then the filler removed"

fault_kill9() {
  local pid; pid=$(pec_pid)
  kill -9 "$pid" || return 1
  for ((i = 0; i < 100; i++)); do _alive "$pid" || break; sleep 0.02; done
  sleep 0.5
  pec_milter_up "$D" "$D/pec-milter.toml"
}
fault_redis() { redis_down "$W/redis" || return 1; sleep "$HOLD"; redis_start; }
fault_clamd() { clamd_down "$W/clamd" || return 1; sleep "$HOLD"; clamd_up "$W/clamd" "$RIG_CLAMD_PORT"; }
fault_slapd() { slapd_down "$W/slapd" || return 1; sleep "$HOLD"; slapd_start; }
# the sink's newest files when it stops: a transfer it cut is one of them (no 250 was given, the
# receipt stays in the outbox; the cut file is not a delivered message)
fault_reinject() {
  sink_down || return 1
  find "$SINK" -type f -printf '%T@ %p\n' | sort -rn | head -n 32 | cut -d' ' -f2- > "$W/sink-cut.txt"
  sleep "$HOLD"; sink_up
}
fault_hsm() {
  hsm_backup "$LABEL" "$W/token-backup" && hsm_delete "$LABEL" || return 1
  sleep "$HOLD"
  hsm_restore "$LABEL" "$W/token-backup"
}
fault_logfull() {
  dd if=/dev/zero of="$D/log/filler" bs=64k >/dev/null 2>&1
  [ "$(df --output=avail -B1 "$D/log" | tail -1)" -lt 65536 ] || { echo "tmpfs not full" >&2; rm -f "$D/log/filler"; return 1; }
  kill -USR1 "$(pec_pid)" || return 1
  sleep "$HOLD"
  rm -f "$D/log/filler"
}
row_before_hsm() {
  pec_milter_down "$D" || return 1
  pec_milter_up "$D" "$D/pec-milter-hsm.toml" && grep -q 'PKCS#11 key ready' "$D/pec-milter.log" &&
    wait_port 127.0.0.1 "$DX_PORT" 10
}

outbox_len() { rcli zcard pec:outbox 2>/dev/null; }
dx_outbox_len() { find "$D/outbox" -maxdepth 1 -type f \( -name '*.eml' -o -name '*.pending' \) | wc -l; }
outbox_empty() {
  local i
  for ((i = 0; i < 300; i++)); do [ "$(outbox_len)" = 0 ] && [ "$(dx_outbox_len)" = 0 ] && return 0; sleep 0.2; done
  echo "outbox: $(outbox_len) left in the state store, $(dx_outbox_len) in the delivery point's" >&2; return 1
}
# acc_since BYTES: accettazioni pec-milter logged after byte BYTES of its log
acc_since() { tail -c +"$(( $1 + 1 ))" "$D/pec-milter.log" | grep -c 'accettazione: envelope signed'; }
LOADARGS=(--connect "unix:$D/pec.sock" --concurrency 4 --rate "$RATE" --retry-tempfail 400 --retry-pause-ms 250
  --timeout 20 --quiet-errors --max-seconds 900)

# observed ROW L0: what pec-milter's log says since its line L0 (4xx answers, the outbox, the
# index's last good copy, the dependencies it saw go down)
observed() {
  local since; since=$(log_since "$D/pec-milter.log" "$2")
  local tf inj op still kept deps
  tf=$(grep -c 'temporary failure' <<<"$since"); inj=$(grep -c 'injection failed' <<<"$since")
  op=$(grep -c 'outbox pass: it was left waiting' <<<"$since")
  still=$(grep -c 'sent, but still in the outbox' <<<"$since")
  kept=$(grep -c 'refresh failed; keeping the previous copy' <<<"$since")
  deps=$(grep -o 'dependency down dependency="[^"]*"' <<<"$since" | sed 's/.*="//; s/"//' | sort -u | paste -sd, -)
  printf '4xx answers %s, injections failed %s, sent by the outbox pass %s, sent but left in the outbox %s, index refreshes failed (last good copy kept) %s, dependencies seen down: %s' \
    "$tf" "$inj" "$op" "$still" "$kept" "${deps:-none}"
}

run_row() {
  local row=$1 b0 target pa pr pd t l0
  t=$EPOCHREALTIME
  l0=$(wc -l < "$D/pec-milter.log")
  if [ "$row" = hsm ]; then ok "[hsm] pec-milter restarted with the PKCS#11 key" row_before_hsm || return 1; fi
  b0=$(stat -c %s "$D/pec-milter.log")
  ns_exec "$LOAD" "${LOADARGS[@]}" --count "$N" --size 2048 --auth "$MARIO" --from "$MARIO" --to "$ANNA" \
    --record "$W/rec/$row.acc" > "$W/out/$row.acc" 2>&1 &
  pa=$!
  ns_exec "$LOAD" "${LOADARGS[@]}" --count "$N" --messages-dir "$W/rx/$row" \
    --from posta-certificata@pec.other.test --to "$MARIO" --record "$W/rec/$row.rx" > "$W/out/$row.rx" 2>&1 &
  pr=$!
  # the delivery point gets the same envelopes of B over LMTP (as Postfix would after reception)
  ns_exec python3 "$RIG_ROOT/integration/faults_lmtp.py" --port "$DX_PORT" --dir "$W/rx/$row" \
    --from posta-certificata@pec.other.test --to "$MARIO" --concurrency 2 --rate "$RATE" \
    --retries 400 --pause 0.25 --record "$W/rec/$row.dx" > "$W/out/$row.dx" 2>&1 &
  pd=$!
  # the fault at a random moment between 10 % and 50 % of the submissions
  target=$(( N / 10 + RANDOM % (N * 2 / 5 + 1) ))
  for ((i = 0; i < 1200; i++)); do [ "$(acc_since "$b0")" -ge "$target" ] && break; sleep 0.05; done
  OBS[$row]="fault after $(acc_since "$b0") of $N accettazioni"
  ok "[$row] fault applied and undone (${WHAT[$row]})" "fault_$row"
  wait "$pa"; wait "$pr"; wait "$pd"
  _log "[$row] access:    $(cat "$W/out/$row.acc" | tail -1)"
  _log "[$row] reception: $(cat "$W/out/$row.rx" | tail -1)"
  _log "[$row] delivery:  $(cat "$W/out/$row.dx" | tail -1)"
  ok "[$row] the outbox is empty" outbox_empty
  OBS[$row]="${OBS[$row]}; $(observed "$row" "$l0"); row took $(rig_elapsed "$t") s"
  _log "[$row] ${OBS[$row]}"
}

for row in $ROWS; do
  run_row "$row" || break
done

# ------------------------------------------------------------------ counting
sleep 1
# the envelope records of the state store (one JSON string per pec:env:* key)
rcli --scan --pattern 'pec:env:*' | sed 's/^/GET /' > "$W/env-get.txt"
rcli --raw < "$W/env-get.txt" > "$W/env-records.jsonl" 2>/dev/null
ok "pec-milter stops (SIGTERM)" pec_milter_down "$D"
fail "no panic in pec-milter's log" grep -q 'panicked' "$D/pec-milter.log"
ok "log verify passes" "$BIN" log verify "$D/log"
find "$SINK" -type f | sort > "$W/sink-files.txt"
xargs -a "$W/sink-files.txt" "$BIN" inspect --json --trust "$CA" --trust "$HSMCA/ca.pem" > "$W/inspect.jsonl" 2>"$W/inspect.err"
_log "sink: $(wc -l < "$W/sink-files.txt") messages"
: > "$W/rows.tsv"
for row in $ROWS; do printf '%s\t%s\t%s\n' "$row" "${WHAT[$row]}" "${OBS[$row]:-not run}" >> "$W/rows.tsv"; done
MACHINE="$(uname -srm), $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), shared"
[ -n "$REPORT" ] && mkdir -p "$(dirname "$REPORT")"
COMMIT=$(git -C "$RIG_ROOT" describe --always --dirty 2>/dev/null || echo "?")
ok "the matrix: nothing lost, every receipt signed and verified, each event once in the log" \
  python3 "$RIG_ROOT/integration/faults_count.py" --work "$W" --log "$D/log" --n "$N" \
    --mode "$([ "$QUICK" = 1 ] && echo quick || echo full)" --machine "$MACHINE" --commit "$COMMIT" \
    --maildir "$D/mail" --failed-checks "$RIG_FAILED" --elapsed "$(rig_elapsed "$T0")" --rate "$RATE" --hold "$HOLD" --report "$REPORT"
cat "$W/table.txt" 2>/dev/null
_log "faults.sh took $(rig_elapsed "$T0") s"
rig_finish
