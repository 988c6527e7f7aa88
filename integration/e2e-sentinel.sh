#!/usr/bin/env bash
# integration/e2e-sentinel.sh — the Redis state store behind Redis Sentinel through failovers
# (issue 16), in a netns with only lo: one primary and one replica redis-server, three sentinels
# (redis-sentinel, or redis-server --sentinel), pec-milter (access point, state backend redis with
# `sentinels`, clamd off) reinjecting its receipts into an smtp-sink that keeps every message.
#   (1) N submissions (examples/milter_load, 8 connections, every 4xx sent again with the same
#       bytes, as an MTA's queue does) with `SENTINEL FAILOVER` in the middle: pec-milter
#       follows the new primary by itself;
#   (2) a second load with SIGKILL of the (new) primary in the middle; the sentinels promote the
#       replica, the killed node comes back as a replica;
# then: every submission answered 250 has exactly one accettazione at the sink and exactly one
# envelope record on the last primary (read with redis-cli), no accettazione went out twice
# (Message-IDs counted), every accettazione has exactly one record in the message log, and
# `pec-milter log verify` passes. 4xx during the switches are allowed (and counted). The counting:
# integration/count_sinks.py exactly-once.
# Env: PEC_MILTER_BIN, MILTER_LOAD (as e2e-crash.sh), N (submissions of load 1, default 1000),
# N2 (load 2, default 300), KEEP=1.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BIN=$(pec_milter_bin)
LOAD=${MILTER_LOAD:-$RIG_ROOT/target/debug/examples/milter_load}
N=${N:-1000} N2=${N2:-300}
rig_begin pecsn
T0=$EPOCHREALTIME
need_pec_milter run
if [ ! -x "$LOAD" ] && [ -z "${MILTER_LOAD:-}" ]; then
  (cd "$RIG_ROOT" && cargo build --locked --example milter_load >/dev/null 2>&1)
fi
[ -x "$LOAD" ] || die "$LOAD missing (cargo build --locked --example milter_load)"

R1=16391 R2=16392 S1=26391 S2=26392 S3=26393
D=$RIG_BASE/pec SINK=$RIG_BASE/sink RD=$RIG_BASE/redis
mkdir -p "$D" "$SINK" "$RD" && chmod 777 "$SINK"
cli() { local port=$1; shift; ns_exec timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@"; }

# ---- Redis: primary R1, replica R2 (no persistence: a node that restarts comes back empty and
# resyncs from the primary)
data_up() { # PORT [replicaof PORT]
  local port=$1 dir=$RD/node$1
  mkdir -p "$dir"
  ns_exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --repl-diskless-sync yes --repl-diskless-sync-delay 0 ${2:+--replicaof 127.0.0.1 "$2"} || return 1
  wait_port 127.0.0.1 "$port" 10
}
data_down() { [ -s "$RD/node$1/redis.pid" ] && kill -TERM "$(cat "$RD/node$1/redis.pid")" 2>/dev/null; wait_closed 127.0.0.1 "$1" 5; }
rig_defer data_down $R1; rig_defer data_down $R2
ok "primary redis on 127.0.0.1:$R1" data_up $R1 || rig_finish
ok "replica redis on 127.0.0.1:$R2" data_up $R2 $R1 || rig_finish
in_sync() { cli "$1" info replication | tr -d '\r' | grep -q '^master_link_status:up'; }
wait_for() { local t=$1 i; shift; for ((i = 0; i < t * 10; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; "$@"; }
ok "replica in sync" wait_for 10 in_sync $R2 || rig_finish

# ---- three sentinels
if command -v redis-sentinel >/dev/null; then SENTINEL=(redis-sentinel); else SENTINEL=(redis-server); fi
sentinel_up() {
  local port=$1 dir=$RD/sentinel$1
  mkdir -p "$dir"
  cat > "$dir/sentinel.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/sentinel.pid
logfile $dir/sentinel.log
dir $dir
sentinel monitor pec 127.0.0.1 $R1 2
sentinel down-after-milliseconds pec 1000
sentinel failover-timeout pec 10000
sentinel parallel-syncs pec 1
EOF
  if [ "${SENTINEL[0]}" = redis-server ]; then
    ns_exec redis-server "$dir/sentinel.conf" --sentinel || return 1
  else
    ns_exec redis-sentinel "$dir/sentinel.conf" || return 1
  fi
  wait_port 127.0.0.1 "$port" 10
}
sentinel_down() { [ -s "$RD/sentinel$1/sentinel.pid" ] && kill -TERM "$(cat "$RD/sentinel$1/sentinel.pid")" 2>/dev/null; wait_closed 127.0.0.1 "$1" 5; }
for s in $S1 $S2 $S3; do
  rig_defer sentinel_down $s
  ok "sentinel (${SENTINEL[0]}) on 127.0.0.1:$s" sentinel_up $s || rig_finish
done
primary_port() { cli $S1 sentinel get-master-addr-by-name pec | sed -n 2p; }
knows_all() { # each sentinel sees the replica and the two other sentinels
  local s
  for s in $S1 $S2 $S3; do
    cli "$s" sentinel replicas pec | grep -qx "$1" || return 1
    [ "$(cli "$s" sentinel sentinels pec | grep -c '^name$')" -ge 2 ] || return 1
  done
}
ok "sentinels agree: primary $R1, replica $R2, quorum" wait_for 30 knows_all "127.0.0.1:$R2" || rig_finish
ok "sentinel ckquorum" cli $S1 sentinel ckquorum pec

# ---- receipts' sink and pec-milter
ip netns exec "$RIG_NETNS" smtp-sink -u nobody -d "$SINK/m." 127.0.0.1:10026 1024 >/dev/null 2>&1 &
echo $! > "$RIG_BASE/sink.pid"; rig_defer _kill_pidfile "$RIG_BASE/sink.pid" 5
ok "smtp-sink keeping the receipts on 127.0.0.1:10026" wait_port 127.0.0.1 10026 10 || rig_finish
ok "config written" write_config "$D" redis || rig_finish
# url: only the database (its host and port are not used with sentinels)
sed -i -e "s#^listen = .*#listen = \"unix:$D/pec.sock\"#" \
  -e "s#^address = \"127.0.0.1:$RIG_REINJECT_PORT\"#address = \"127.0.0.1:10026\"#" \
  -e '/^\[clamd\]/,/^\[/s#^enabled = true#enabled = false#' \
  -e "s#^url = \"redis://.*#url = \"redis://sentinel-named/0\"\nsentinels = [\"127.0.0.1:$S1\", \"127.0.0.1:$S2\", \"127.0.0.1:$S3\"]\nmaster_name = \"pec\"\ntimeout = \"3s\"\nwait_replicas = 1\nwait_timeout = \"500ms\"#" \
  "$D/pec-milter.toml"
printf '\n[delivery]\nlisten = ""\noutbox = "%s/outbox"\n\n[timers]\nenabled = false\n' "$D" >> "$D/pec-milter.toml"
# the outbox pass every second for receipts queued 3 s ago: a write that reached the store but
# answered 4xx (its WAIT unconfirmed) queued its receipt; the MTA's retry finds it queued and the
# pass sends it
sed -i -e 's#^timeout = "30s"#timeout = "2s"\noutbox_interval = "1s"\noutbox_grace = "3s"#' "$D/pec-milter.toml"
ok "config checks" "$BIN" check-config --config "$D/pec-milter.toml" || rig_finish
ok "pec-milter up" pec_milter_up "$D" "$D/pec-milter.toml" || rig_finish

acc_records() { cat "$D"/log/*/*.jsonl 2>/dev/null | grep -c '"event":"accettazione"'; }
LOADARGS=(--connect "unix:$D/pec.sock" --concurrency 8 --size 2048 --auth "$MARIO" --from "$MARIO"
  --to "$ANNA" --max-seconds 100 --timeout 60 --retry-tempfail 100 --retry-pause-ms 250 --quiet-errors)
load_summary() { grep -oE 'sent=[0-9]+ accept=[0-9]+ tempfail=[0-9]+|errors=[0-9]+|elapsed_s=[0-9.]+|eom_max_ms=[0-9.]+|retried=[0-9]+' "$1" | tr '\n' ' '; }
field() { grep -oE "$2=[0-9]+" "$1" | head -1 | cut -d= -f2; }

# ---- (1) SENTINEL FAILOVER in the middle of the load
B=$(acc_records)
ns_exec "$LOAD" "${LOADARGS[@]}" --count "$N" --record "$RIG_BASE/record1.txt" > "$RIG_BASE/load1.txt" 2>&1 &
LOADPID=$!
for ((i = 0; i < 1200; i++)); do [ "$(acc_records)" -ge $((B + N / 4)) ] && break; sleep 0.05; done
_log "(1) $(acc_records) accettazioni recorded; SENTINEL FAILOVER pec"
TF=$EPOCHREALTIME
ok "(1) SENTINEL FAILOVER accepted" cli $S1 sentinel failover pec
new_primary() { [ "$(primary_port)" = "$1" ]; }
ok "(1) the sentinels name 127.0.0.1:$R2 primary" wait_for 20 new_primary $R2
_log "(1) switch-master after $(rig_elapsed "$TF") s"
old_rejoined() { in_sync "$1" && cli "$2" role | head -1 | grep -qx master; }
ok "(1) the old primary rejoins as a replica of the new one" wait_for 30 old_rejoined $R1 $R2
_log "(1) old primary a replica again after $(rig_elapsed "$TF") s"
wait "$LOADPID"
_log "(1) load 1: $(load_summary "$RIG_BASE/load1.txt")"
ok "(1) all $N submissions answered 250 in the end" test "$(field "$RIG_BASE/load1.txt" accept)" = "$N"
ok "(1) pec-milter followed the new primary" grep -q "the primary moved; following it" "$D/pec-milter.log"

# ---- (2) SIGKILL of the primary (now R2) in the middle of the load
if [ "$N2" -gt 0 ]; then
  B=$(acc_records)
  ns_exec "$LOAD" "${LOADARGS[@]}" --count "$N2" --record "$RIG_BASE/record2.txt" > "$RIG_BASE/load2.txt" 2>&1 &
  LOADPID=$!
  for ((i = 0; i < 1200; i++)); do [ "$(acc_records)" -ge $((B + N2 / 4)) ] && break; sleep 0.05; done
  _log "(2) $(acc_records) accettazioni recorded; SIGKILL to the primary 127.0.0.1:$R2"
  TF=$EPOCHREALTIME
  ok "(2) SIGKILL to the primary" kill -KILL "$(cat "$RD/node$R2/redis.pid")"
  ok "(2) the sentinels promote 127.0.0.1:$R1" wait_for 30 new_primary $R1
  _log "(2) switch-master after $(rig_elapsed "$TF") s"
  # the killed node comes back as a replica (what its config, rewritten by Sentinel, would say)
  ok "(2) the killed node restarts as a replica" data_up $R2 $R1
  ok "(2) it is in sync" wait_for 30 in_sync $R2
  wait "$LOADPID"
  _log "(2) load 2: $(load_summary "$RIG_BASE/load2.txt")"
  ok "(2) all $N2 submissions answered 250 in the end" test "$(field "$RIG_BASE/load2.txt" accept)" = "$N2"
fi

# every queued receipt handed to the MTA (the outbox set empty on the primary)
outbox_left() { cli "$(primary_port)" ZCARD pec:outbox; }
outbox_empty() { [ "$(outbox_left)" = 0 ]; }
ok "the outbox is drained" wait_for 30 outbox_empty
_log "outbox entries left: $(outbox_left)"
sleep 1
ok "pec-milter stops (SIGTERM)" pec_milter_down "$D"
fail "no panic in pec-milter's log" grep -q 'panicked' "$D/pec-milter.log"
ok "log verify passes" "$BIN" log verify "$D/log"

# ---- the records on the last primary, the receipts at the sink, the message log
P=$(primary_port)
_log "last primary: 127.0.0.1:$P"
cli "$P" --scan --pattern 'pec:env:*' > "$RIG_BASE/envkeys.txt"
: > "$RIG_BASE/records.txt"
xargs -r -n 200 sh -c 'ns=$0 port=$1; shift; ip netns exec "$ns" redis-cli -h 127.0.0.1 -p "$port" MGET "$@"' \
  "$RIG_NETNS" "$P" < "$RIG_BASE/envkeys.txt" >> "$RIG_BASE/records.txt"
# the Message-IDs the load saw accepted (milter_load --record: index, Message-ID, status, ...)
cat "$RIG_BASE"/record*.txt 2>/dev/null | awk -F'\t' '$3 == "accept" { print $2 }' > "$RIG_BASE/accepted.txt"
ok "every 250 has exactly one accettazione at the sink and one state record; no duplicate" \
  python3 "$RIG_ROOT/integration/count_sinks.py" exactly-once "$SINK" "$D/log" "$RIG_BASE/accepted.txt" \
  "$RIG_BASE/records.txt" --retried "$(field "$RIG_BASE/load1.txt" retried)" \
  --retried "$(field "$RIG_BASE/load2.txt" retried 2>/dev/null || echo 0)" --counts "$RIG_BASE/counts.txt"

_log "$(cat "$RIG_BASE/counts.txt" 2>/dev/null)"
_log "e2e-sentinel took $(rig_elapsed "$T0") s"
rig_finish
