#!/usr/bin/env bash
# integration/e2e-reload.sh — reloading the configuration under load (issue 17), in a netns with
# only lo: pec-milter (access point, embedded state, clamd off, timers on, and NO providers' index:
# the daemon SIGHUP used to end) reinjects its receipts into an smtp-sink that keeps every message;
# examples/milter_load submits N (1000) messages over the milter protocol (8 connections, paced at
# RATE/s so that the load spans every reload; each message sent once: no retry of a 4xx) while
# pec-milter is asked to reload six times:
#   (1) `pec-milter reload --config` (the same file: the pid from the message log's lock);
#   (2) a burst of three SIGHUP at once (the same file): taken one after another or folded;
#   (3) SIGHUP with a changed, valid file: the provider's name, mario in the holder class upr,
#       [clamd] timeout, and [milter] listen moved (a listener needs a restart: warned, the old
#       socket kept);
#   (4) SIGHUP with a broken file (a TOML syntax error): refused with one error line;
#   (5) SIGHUP with a file whose key does not match its certificate: refused likewise;
#   (6) SIGHUP with the changed, valid file again.
# Checks:
#   - every reload happened while the load ran (the accettazioni recorded by then are < N);
#   - 0 failed: all N answered 250 at the first try (tempfail = 0, errors = 0). No 4xx is allowed,
#     not even one an MTA would retry: a reload builds the new configuration beside the running
#     one and swaps a pointer; each milter connection keeps the configuration it opened with, so
#     nothing a message in progress uses is closed under it. A 4xx here would be a bug;
#   - every submission answered 250 has its envelope (the body replaced, a Message-ID set:
#     milter_load --record) and exactly one accettazione at the sink and one accettazione record in
#     the message log; no accettazione went out twice; `pec-milter log verify` passes;
#   - the two bad files were refused (2 "reload refused" lines), the same process served on
#     through and after them (same pid, the load went on, a probe after the load is accepted);
#   - the changed settings are in force after (3) and (6): accettazioni before name the old
#     provider, those after the new one (the last ones all); the reloaded line lists the provider,
#     clamd and holders sections; a probe mario -> cittadino (upr -> upr) is a non-accettazione
#     after, where the same probe before the load was accepted; the listener move was warned and
#     the old socket still serves.
# Env: PEC_MILTER_BIN, MILTER_LOAD (as e2e-crash.sh), N (default 1000), RATE (default 40), KEEP=1.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

BIN=$(pec_milter_bin)
LOAD=${MILTER_LOAD:-$RIG_ROOT/target/debug/examples/milter_load}
N=${N:-1000} RATE=${RATE:-40}
rig_begin pecrl
T0=$EPOCHREALTIME
need_pec_milter run reload
if [ ! -x "$LOAD" ] && [ -z "${MILTER_LOAD:-}" ]; then
  # `cargo test --all-targets` compiles the examples without placing them here
  (cd "$RIG_ROOT" && cargo build --locked --example milter_load >/dev/null 2>&1)
fi
[ -x "$LOAD" ] || die "$LOAD missing (cargo build --locked --example milter_load)"

D=$RIG_BASE/pec SINK=$RIG_BASE/sink
mkdir -p "$D" "$SINK" && chmod 777 "$SINK"
ip netns exec "$RIG_NETNS" smtp-sink -u nobody -d "$SINK/m." 127.0.0.1:10026 1024 >/dev/null 2>&1 &
echo $! > "$RIG_BASE/sink.pid"; rig_defer _kill_pidfile "$RIG_BASE/sink.pid" 5
ok "smtp-sink keeping the receipts on 127.0.0.1:10026" wait_port 127.0.0.1 10026 10 || rig_finish

ok "config written" write_config "$D" embedded || rig_finish
sed -i -e "s#^listen = .*#listen = \"unix:$D/pec.sock\"#" \
  -e "s#^address = \"127.0.0.1:$RIG_REINJECT_PORT\"#address = \"127.0.0.1:10026\"#" \
  -e '/^\[clamd\]/,/^\[/s#^enabled = true#enabled = false#' "$D/pec-milter.toml"
printf '\n[delivery]\nlisten = ""\noutbox = "%s/outbox"\n' "$D" >> "$D/pec-milter.toml"
sed -i -e 's#^timeout = "30s"#timeout = "2s"\noutbox_interval = "1s"\noutbox_grace = "3s"#' "$D/pec-milter.toml"
ok "config checks" "$BIN" check-config --config "$D/pec-milter.toml" || rig_finish
cp "$D/pec-milter.toml" "$RIG_BASE/base.toml"
# (3), (6): the changed, valid file
NEWNAME="Demo PEC Ricaricata S.p.A."
sed -e "s#^name = \"Demo PEC S.p.A.\"#name = \"$NEWNAME\"#" \
  -e "s#^upr = \[\"$CITTADINO\"\]#upr = [\"$CITTADINO\", \"$MARIO\"]#" \
  -e '/^\[clamd\]/,/^\[/s#^timeout = "60s"#timeout = "30s"#' \
  -e "s#^listen = \"unix:$D/pec.sock\"#listen = \"unix:$D/moved.sock\"#" \
  "$RIG_BASE/base.toml" > "$RIG_BASE/changed.toml"
ok "the changed file checks" "$BIN" check-config --config "$RIG_BASE/changed.toml"
ok "the changed file says what it should" bash -c "grep -q '$NEWNAME' '$RIG_BASE/changed.toml' && grep -q '\"$MARIO\"\\]' '$RIG_BASE/changed.toml' && grep -q 'moved.sock' '$RIG_BASE/changed.toml' && grep -q '^timeout = \"30s\"' '$RIG_BASE/changed.toml'"
# (4): a syntax error
{ cat "$RIG_BASE/base.toml"; printf '\n[provider\n'; } > "$RIG_BASE/broken.toml"
fail "the broken file does not check (exit 2)" --code 2 "$BIN" check-config --config "$RIG_BASE/broken.toml"
# (5): a key of its own, not the certificate's
openssl genrsa -out "$RIG_BASE/other.key" 2048 2>/dev/null
sed -e "s#^key = .*#key = \"$RIG_BASE/other.key\"#" -e 's#^init_demo = true#init_demo = false#' \
  "$RIG_BASE/base.toml" > "$RIG_BASE/mismatch.toml"
ok "the key-mismatch file passes check-config (only loading the key fails)" "$BIN" check-config --config "$RIG_BASE/mismatch.toml"

ok "pec-milter up" pec_milter_up "$D" "$D/pec-milter.toml" || rig_finish
PID=$(cat "$D/pec-milter.pid")

acc_records() { cat "$D"/log/*/*.jsonl 2>/dev/null | grep -c '"event":"accettazione"'; }
field() { grep -oE "$2=[0-9]+" "$1" | head -1 | cut -d= -f2; }
load_summary() { grep -oE 'sent=[0-9]+ accept=[0-9]+ tempfail=[0-9]+ reject=[0-9]+ discard=[0-9]+|errors=[0-9]+|elapsed_s=[0-9.]+|eom_p99_ms=[0-9.]+|eom_max_ms=[0-9.]+|retried=[0-9]+' "$1" | tr '\n' ' '; }
count() { pec_milter_log_count "$D" "$1"; }
wait_count() { # ERE N [SECS]: until the log has N lines matching ERE
  local i; for ((i = 0; i < ${3:-20} * 20; i++)); do [ "$(count "$1")" -ge "$2" ] && return 0; sleep 0.05; done; return 1
}
wait_acc() { local i; for ((i = 0; i < 1200; i++)); do [ "$(acc_records)" -ge "$1" ] && return 0; sleep 0.05; done; return 1; }
# probe FROM TO NAME: one submission, its summary in RIG_BASE/NAME.txt
probe() { ns_exec "$LOAD" --connect "unix:$D/pec.sock" --count 1 --concurrency 1 --size 512 --auth "$1" --from "$1" --to "$2" --max-seconds 30 --record "$RIG_BASE/$3.rec" > "$RIG_BASE/$3.txt" 2>&1; }

# ---- before the load: mario (upa1) may write to cittadino (upr)
probe "$MARIO" "$CITTADINO" probe-before
ok "before: mario -> cittadino accepted (mario is upa1)" test "$(field "$RIG_BASE/probe-before.txt" accept)" = 1
B=$(acc_records)

# ---- the load and the six reloads
ns_exec "$LOAD" --connect "unix:$D/pec.sock" --concurrency 8 --size 2048 --auth "$MARIO" --from "$MARIO" \
  --to "$ANNA" --rate "$RATE" --count "$N" --max-seconds 300 --timeout 60 --record "$RIG_BASE/record.txt" \
  > "$RIG_BASE/load.txt" 2>&1 &
LOADPID=$!
AT=()   # accettazioni recorded at each reload
reloaded=$(count 'configuration reloaded')
refused=$(count 'reload refused')

wait_acc $((B + N / 10))
AT+=("$(acc_records)")
ok "(1) pec-milter reload --config: the file checked, SIGHUP sent to pid $PID" \
  bash -c "'$BIN' reload --config '$D/pec-milter.toml' | grep -q 'pid $PID'"
ok "(1) reloaded" wait_count 'configuration reloaded' $((reloaded + 1))
reloaded=$(count 'configuration reloaded')

wait_acc $((B + 2 * N / 10))
AT+=("$(acc_records)")
kill -HUP "$PID"; kill -HUP "$PID"; kill -HUP "$PID"
ok "(2) a burst of three SIGHUP: at least one reload" wait_count 'configuration reloaded' $((reloaded + 1))
sleep 0.5
reloaded=$(count 'configuration reloaded')
_log "(2) reloads after the burst: $(count 'SIGHUP: reloading the configuration') SIGHUP taken in all"

wait_acc $((B + 35 * N / 100))
AT+=("$(acc_records)")
cp "$RIG_BASE/changed.toml" "$D/pec-milter.toml"
kill -HUP "$PID"
ok "(3) the changed file reloaded" wait_count 'configuration reloaded' $((reloaded + 1))
reloaded=$(count 'configuration reloaded')
ok "(3) the sections that changed are named: provider, clamd, holders" \
  grep -qE 'configuration reloaded.*changed=\["provider", "clamd", "holders"\]' "$D/pec-milter.log"
ok "(3) the moved listener is warned about (needs a restart), the old socket kept" \
  grep -qE 'needs a restart.*key="?milter.listen.*pec.sock.*kept.*moved.sock.*configured' "$D/pec-milter.log"
AFTER3=$(acc_records)

wait_acc $((B + N / 2))
AT+=("$(acc_records)")
cp "$RIG_BASE/broken.toml" "$D/pec-milter.toml"
kill -HUP "$PID"
ok "(4) the broken file refused" wait_count 'reload refused' $((refused + 1))
refused=$(count 'reload refused')

wait_acc $((B + 65 * N / 100))
AT+=("$(acc_records)")
cp "$RIG_BASE/mismatch.toml" "$D/pec-milter.toml"
kill -HUP "$PID"
ok "(5) the key that does not match its certificate refused" wait_count 'reload refused' $((refused + 1))
refused=$(count 'reload refused')
ok "(5) refused for its key" grep -qE 'reload refused.*does not match the certificate' "$D/pec-milter.log"

wait_acc $((B + 8 * N / 10))
AT+=("$(acc_records)")
cp "$RIG_BASE/changed.toml" "$D/pec-milter.toml"
kill -HUP "$PID"
ok "(6) the changed file reloaded again" wait_count 'configuration reloaded' $((reloaded + 1))

wait "$LOADPID"
_log "load: $(load_summary "$RIG_BASE/load.txt")"
_log "accettazioni recorded at the reloads (of $((B + N))): ${AT[*]}"
ok "every reload happened during the load" test "${AT[5]:-$((B + N))}" -lt $((B + N))
ok "0 failed: all $N submissions answered 250 at the first try (tempfail 0, errors 0, no retry)" \
  grep -qE "sent=$N accept=$N tempfail=0 reject=0 discard=0 other=0 errors=0 " "$RIG_BASE/load.txt"
ok "the same process all along (pid $PID)" bash -c "kill -0 $PID && [ \"\$(cat '$D/pec-milter.pid')\" = $PID ]"
ok "exactly two reloads refused" test "$(count 'reload refused')" = 2
ok "each refusal is one error line, nothing else at ERROR level" \
  test "$(grep -c 'ERROR' "$D/pec-milter.log")" = 2

# ---- after: the changed settings in force, the old socket serving
probe "$MARIO" "$CITTADINO" probe-after
ok "after: mario -> cittadino is a non-accettazione (mario is upr now)" test "$(field "$RIG_BASE/probe-after.txt" discard)" = 1
probe "$MARIO" "$ANNA" probe-anna
ok "after: mario -> anna (upr -> upa) accepted, on the old socket" test "$(field "$RIG_BASE/probe-anna.txt" accept)" = 1
fail "the moved socket was never bound" test -e "$D/moved.sock"

# the outbox pass sends what is left (none expected), then the daemon stops
outbox_rows() { sqlite3 "$D/state/state.sqlite" 'SELECT count(*) FROM outbox' 2>/dev/null; }
for ((i = 0; i < 100; i++)); do [ "$(outbox_rows)" = 0 ] && break; sleep 0.1; done
ok "the outbox is empty" test "$(outbox_rows)" = 0
sleep 1
ok "pec-milter stops (SIGTERM)" pec_milter_down "$D"
fail "no panic in pec-milter's log" grep -q 'panicked' "$D/pec-milter.log"
ok "log verify passes" "$BIN" log verify "$D/log"

# ---- every 250 has its envelope, one accettazione at the sink, one log record; the names
cat "$RIG_BASE/record.txt" "$RIG_BASE/probe-before.rec" "$RIG_BASE/probe-anna.rec" > "$RIG_BASE/records.txt"
ok "every 250 has its envelope and exactly one accettazione (sink and log); the new name after the reload" \
  python3 - "$SINK" "$D/log" "$RIG_BASE/records.txt" "$NEWNAME" "$AFTER3" "$B" "$RIG_BASE/counts.txt" <<'PY'
import collections, email, email.policy, glob, json, os, re, sys
sink, logdir, records_f, newname, after3, before = sys.argv[1:7]
counts_f = sys.argv[7]
after3, before = int(after3), int(before)
norm = lambda s: (s or "").strip().strip("<>").strip().lower()
accepted, no_env = [], []
for line in open(records_f):
    f = line.rstrip("\n").split("\t")
    if len(f) < 6 or f[2] != "accept":
        continue
    accepted.append(norm(f[1]))
    if int(f[4]) == 0 or f[5] == "-":
        no_env.append(f[1])
sent = {}   # original Message-ID -> [gestore-emittente, ...]
for path in glob.glob(os.path.join(sink, "**", "*"), recursive=True):
    if not os.path.isfile(path):
        continue
    raw = open(path, "rb").read()
    if not re.search(rb"^X-Ricevuta: accettazione\r?$", raw, re.M | re.I):
        continue
    m = re.search(rb"^X-Riferimento-Message-ID: <([^>]+)>", raw, re.M | re.I)
    assert m, path
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    gestore = None
    for part in msg.walk():
        if (part.get_filename() or "").lower() == "daticert.xml":
            xml = part.get_payload(decode=True).decode("utf-8", "replace")
            g = re.search(r"<gestore-emittente>([^<]*)</gestore-emittente>", xml)
            gestore = g.group(1) if g else None
    assert gestore, f"no gestore-emittente in {path}"
    sent.setdefault(norm(m.group(1).decode()), []).append(gestore)
logged = collections.Counter()
order = []  # accettazione records in log order: (msgid)
for f in sorted(glob.glob(os.path.join(logdir, "*", "*.jsonl"))):
    for line in open(f, encoding="utf-8"):
        if '"event":"accettazione"' in line:
            mid = norm(json.loads(line)["msgid"])
            logged[mid] += 1
            order.append(mid)
names = collections.Counter(g for gs in sent.values() for g in gs)
summary = (f"answered 250: {len(accepted)}; envelopes: {len(accepted) - len(no_env)}; accettazioni at the sink: "
           f"{sum(len(v) for v in sent.values())} ({len(sent)} distinct); log records: {sum(logged.values())}; "
           f"by provider name: {dict(names)}")
print(summary)
open(counts_f, "w").write(summary + "\n")
assert accepted and len(set(accepted)) == len(accepted), "accepted list empty or repeated"
assert not no_env, f"{len(no_env)} accepted without an envelope, e.g. {no_env[:3]}"
missing = [a for a in accepted if len(sent.get(a, [])) != 1]
assert not missing, f"{len(missing)} accepted without exactly one accettazione, e.g. {missing[:3]}"
twice = [k for k, v in sent.items() if len(v) > 1]
assert not twice, f"accettazioni sent twice: {twice[:3]}"
bad_log = [a for a in accepted if logged[a] != 1]
assert not bad_log, f"{len(bad_log)} accepted without exactly one log record, e.g. {bad_log[:3]}"
# the provider's name: the old one until (3) took effect, the new one after
old = [mid for mid in order[:before] if mid in sent]
assert old and all(g != newname for mid in old for g in sent[mid]), "the probe before the load names the old provider"
late = [mid for mid in order[after3 + 8:] if mid in sent]
assert late and all(g == newname for mid in late for g in sent[mid]), \
    f"accettazioni recorded after the reload (3) and its 8 connections in progress name {newname}"
assert names[newname] > 0 and sum(names.values()) > names[newname], "both names seen"
PY
_log "$(cat "$RIG_BASE/counts.txt" 2>/dev/null)"
_log "reloads: $(count 'configuration reloaded') taken, $(count 'reload refused') refused, $(count 'SIGHUP: reloading the configuration') SIGHUP"
_log "e2e-reload took $(rig_elapsed "$T0") s"
rig_finish
