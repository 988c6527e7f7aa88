#!/usr/bin/env bash
# integration/bench/profile.sh — where pec-milter spends a protocol-level run (what
# BENCHMARKS.md names as the bounds). In a netns with only lo: smtp-sink as the reinjection
# target, one pec-milter (access point, clamd off, PEM key), then examples/milter_load drives
# it while a profiler watches:
#   TOOL=perf     perf record -g on pec-milter; prints the top of perf report (default)
#   TOOL=strace   strace -f -c (syscall time) on pec-milter
#   TOOL=offcpu   strace -f -T -e trace=fsync,fdatasync,connect,sendto,write,recvfrom: slowest calls
#   TOOL=massif   pec-milter under valgrind --tool=massif, one message of SIZE bytes (COUNT=1):
#                 the heap at its peak, by allocation site (what the size runs' VmHWM is made of)
#   TOOL=none     just the run (figures only)
# Env: STATE=embedded|redis (default embedded), LISTEN=unix|tcp (default unix), COUNT=1000,
# CONC=8, SIZE=10240, WORKERS=n ([milter] workers; the rig's default 2), QUICKACK=1 (no delayed ACK on lo),
# LOG=off (no legal message log; default on), MILTER=floor (examples/floor_milter.rs instead of
# pec-milter: the protocol-level floor, unix socket only), KEEP=1. Release build expected (cargo build --release --locked --examples).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
: "${TOOL:=perf}" "${STATE:=embedded}" "${LISTEN:=unix}" "${COUNT:=1000}" "${CONC:=8}" "${SIZE:=10240}"
export PEC_MILTER_BIN=${PEC_MILTER_BIN:-target/release/pec-milter}
BIN=$(pec_milter_bin) EX=$RIG_ROOT/target/release/examples
[ -x "$BIN" ] && [ -x "$EX/milter_load" ] || { echo "build first: cargo build --release --locked --examples" >&2; exit 1; }

rig_begin pecprof
# QUICKACK=1: no delayed ACKs on loopback in this namespace (route attribute), to tell
# Nagle / delayed-ACK stalls from real work
if [ "${QUICKACK:-0}" = 1 ]; then
  ip -n "$RIG_NETNS" route replace local 127.0.0.0/8 dev lo table local proto kernel scope host src 127.0.0.1 quickack 1 || exit 1
fi
D=$RIG_BASE/pec
ip netns exec "$RIG_NETNS" smtp-sink -u nobody 127.0.0.1:10026 1024 >/dev/null 2>&1 &   # simple command: $! is smtp-sink
echo $! > "$RIG_BASE/sink.pid"; rig_defer _kill_pidfile "$RIG_BASE/sink.pid" 5
wait_port 127.0.0.1 10026 10 || exit 1
[ "$STATE" = redis ] && { redis_up "$RIG_BASE/redis" "$RIG_REDIS_PORT" || exit 1; }
write_config "$D" "$STATE" || exit 1
if [ "$LISTEN" = unix ]; then CONNECT=unix:$D/pec.sock; else CONNECT=inet:127.0.0.1:$RIG_MILTER_PORT; fi
sed -i -e "s#^listen = .*#listen = \"$CONNECT\"#" -e "s#^address = \"127.0.0.1:$RIG_REINJECT_PORT\"#address = \"127.0.0.1:10026\"#" \
  -e 's#^enabled = true#enabled = false#' "$D/pec-milter.toml"
[ -n "${WORKERS:-}" ] && sed -i "s#^workers = .*#workers = $WORKERS#" "$D/pec-milter.toml"
# LOG=off: the legal message log switched off (the A/B of its cost; on by default)
[ "${LOG:-on}" = off ] && sed -i '/^\[log\]/a enabled = false' "$D/pec-milter.toml"
printf '\n[delivery]\nlisten = ""\noutbox = "%s/outbox"\n\n[timers]\nenabled = false\n' "$D" >> "$D/pec-milter.toml"
if [ "$TOOL" = massif ]; then
  REAL=$BIN
  printf '#!/bin/sh\nexec valgrind --tool=massif --massif-out-file=%s/massif.%%p.out %s "$@"\n' "$RIG_BASE" "$REAL" > "$RIG_BASE/massif.sh"
  chmod +x "$RIG_BASE/massif.sh"; export PEC_MILTER_BIN=$RIG_BASE/massif.sh
  COUNT=${COUNT_SET:-1}
fi
pec_milter_up "$D" "$D/pec-milter.toml" || exit 1
PID=$(cat "$D/pec-milter.pid")
# MILTER=floor: the same load on examples/floor_milter.rs instead (the protocol-level floor:
# milter protocol, the same milter actions, the receipt injected on a kept connection; no
# signing, no state, no log, clamd off as here), replaying an envelope and a receipt signed
# once with this rig's demo key. Its CPU is what a milter costs before any PEC work.
if [ "${MILTER:-pec}" = floor ]; then
  F=$RIG_BASE/floor; mkdir -p "$F"
  { printf 'From: <%s>\r\nTo: <%s>\r\nSubject: floor\r\nMessage-ID: <floor.1@client.pec.demo.test>\r\n' "$MARIO" "$ANNA"
    printf 'Date: Mon, 01 Dec 2025 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n'
    head -c "$SIZE" /dev/zero | tr '\0' 'x' | fold -w 76 | sed 's/$/\r/'; } > "$F/orig.eml"
  ID=(--key "$D/demo/provider.key" --cert "$D/demo/provider.crt" --gestore "Demo PEC" --domain pec.demo.test)
  "$BIN" envelope "${ID[@]}" --certified pec.demo.test --id "opec.floor.1@pec.demo.test" "$F/orig.eml" > "$F/envelope.eml" || exit 1
  "$BIN" receipt "${ID[@]}" --kind avvenuta-consegna --id "opec.floor.1@pec.demo.test" --sender "$MARIO" \
    --recipient "$ANNA" > "$F/receipt.eml" || exit 1
  pec_milter_down "$D" || exit 1
  ip netns exec "$RIG_NETNS" "$EX/floor_milter" --listen "${CONNECT#unix:}" --envelope "$F/envelope.eml" \
    --receipt "$F/receipt.eml" --reinject 127.0.0.1:10026 --clamd off --workers "${WORKERS:-2}" > "$F/floor.log" 2>&1 &
  PID=$!; echo "$PID" > "$F/floor.pid"; rig_defer _kill_pidfile "$F/floor.pid" 5
  for ((i = 0; i < 100; i++)); do
    [ -S "${CONNECT#unix:}" ] && break; sleep 0.1
  done
  [ "$LISTEN" = unix ] || { echo "MILTER=floor: unix socket only" >&2; exit 2; }
fi
LOAD=(--connect "$CONNECT" --auth "$MARIO" --from "$MARIO" --to "$ANNA" --size "$SIZE" --concurrency "$CONC" --quiet-errors)
[ "$TOOL" = massif ] || ns_exec "$EX/milter_load" "${LOAD[@]}" --count 50 >/dev/null   # warm-up
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg); state=$STATE listen=$LISTEN count=$COUNT conc=$CONC size=$SIZE tool=$TOOL"
case $TOOL in
  perf)
    # DWARF call graphs: the release build has debug info (profile.release debug = 1) but no
    # frame pointers. libcrypto has no symbols here (no dbgsym package): its share is by DSO.
    perf record -F 299 --call-graph dwarf,16384 -o "$RIG_BASE/perf.data" -p "$PID" >/dev/null 2>&1 &
    PERF=$!; sleep 0.5
    ns_exec "$EX/milter_load" "${LOAD[@]}" --count "$COUNT"
    kill -INT "$PERF"; wait "$PERF"
    R=(perf report -i "$RIG_BASE/perf.data" --stdio --percent-limit 1.5)
    echo "# --- self time by shared object"
    "${R[@]}" --no-children --sort dso -g none 2>/dev/null | grep -E '^ +[0-9]'
    echo "# --- self time, top symbols"
    "${R[@]}" --no-children --sort dso,symbol -g none 2>/dev/null | grep -E '^ +[0-9]' | head -25
    echo "# --- inclusive time of pec-milter functions (children included)"
    "${R[@]}" --children --sort symbol -g none 2>/dev/null | grep -E '^ +[0-9]' \
      | grep -E 'pec_milter::|indymilter::|openssl::|redis::|tokio::net' | head -30
    ;;
  strace)
    strace -f -c -o "$RIG_BASE/strace.txt" -p "$PID" &
    ST=$!; sleep 0.5
    ns_exec "$EX/milter_load" "${LOAD[@]}" --count "$COUNT"
    kill -INT "$ST"; wait "$ST"; head -25 "$RIG_BASE/strace.txt"
    ;;
  offcpu)
    strace -f -T -tt -e trace=fsync,fdatasync,connect,sendto,write,writev,recvfrom,read -o "$RIG_BASE/strace.txt" -p "$PID" &
    ST=$!; sleep 0.5
    ns_exec "$EX/milter_load" "${LOAD[@]}" --count "$COUNT"
    kill -INT "$ST"; wait "$ST"
    echo "# syscall: count, total s, mean ms (strace -T, blocking time included)"
    awk '/unfinished \.\.\.>/ { next }
         { if (match($0, /<\.\.\. [a-z0-9_]+ resumed>/)) { n = substr($0, RSTART + 5, RLENGTH - 14) }
           else { n = $3; sub(/\(.*/, "", n) }
           t = $NF; gsub(/[<>]/, "", t); if (t ~ /^[0-9.]+$/) { c[n]++; s[n] += t } }
         END { for (k in c) printf "%-12s %7d %8.3f %8.3f\n", k, c[k], s[k], 1000 * s[k] / c[k] }' "$RIG_BASE/strace.txt" | sort -k3 -nr | head
    ;;
  massif)
    ns_exec "$EX/milter_load" "${LOAD[@]}" --count "$COUNT" --timeout 600
    pec_milter_down "$D"
    # one file per process (the `run --help` probe of pec_milter_up too): the largest is the daemon's
    ms_print "$(ls -S "$RIG_BASE"/massif.*.out | head -1)" > "$RIG_BASE/massif.txt"
    # the peak snapshot: total, then the pec-milter frames of its allocation tree
    local_peak=$(grep -o '[0-9]* (peak)' "$RIG_BASE/massif.txt" | tail -1 | cut -d' ' -f1)
    awk -v n="$local_peak" '$1 == n && NF == 6 { printf "# peak heap (snapshot %s): %s bytes useful\n", n, $4; p = 1; next }
         p && NF == 6 && $1 ~ /^[0-9]+$/ { exit }
         p && /pec_milter::/ && !/closure|UnknownInlined/ { sub(/0x[0-9A-F]+: /, ""); gsub(/^[ |]+/, ""); if (!seen[$0]++) print "  " $0 }' \
      "$RIG_BASE/massif.txt" | cut -c1-150 | head -30
    exit 0 ;;
  none) ns_exec "$EX/milter_load" "${LOAD[@]}" --count "$COUNT" ;;
esac
echo "# pec-milter CPU (utime+stime) total: $(awk '{ sub(/^.*\) /, ""); printf "%.2f s", ($12 + $13) / 100 }' "/proc/$PID/stat")"
rig_finish
