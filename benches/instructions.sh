#!/usr/bin/env bash
# Instructions per invocation, counted by valgrind's callgrind: management and one worker on a
# fixed run of N echo invocations (PostgreSQL store, the local RabbitMQ), for each way in:
# one HTTP request per invocation, bulk invokes of 64, and one batch. Instruction counts do not
# swing with the load of a shared machine the way rates and CPU time do, so a change can be
# judged to the percent by running this before and after it. It then splits management's
# instructions on the one-request path by component (HTTP, AMQP client, store client, async
# runtime, allocator, Warren's own code, ...) and by stage (the inclusive cost of the
# functions that parse, authenticate, record and publish).
#
#   benches/instructions.sh            # N = 2000
#   N=5000 benches/instructions.sh
#
# Needs valgrind, psql, curl, RabbitMQ on 127.0.0.1:5672 (guest) and PostgreSQL on
# 127.0.0.1:5432 (user postgres, trust); builds the release binaries first
# (NO_BUILD=1 skips that). Works in a fresh database warren_instr, dropped at the end; the
# callgrind files stay in target/bench/instructions/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${N:-2000}
BULK=64
PORT=${PORT:-7391}
KEY="wrn_instructions_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
BASE="http://127.0.0.1:$PORT"
AMQP="amqp://guest:guest@127.0.0.1:5672/%2f"
PG_ADMIN="postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
STORE="postgres://postgres@127.0.0.1:5432/warren_instr?sslmode=disable"
WORK="$ROOT/target/bench/instructions"
BIN="$ROOT/target/release"
POOL="instr-$$"
FN="instr$$"

for tool in valgrind callgrind_control callgrind_annotate psql curl python3; do
    command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is needed (apt-get install valgrind postgresql-client curl python3)" >&2; exit 2; }
done
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release -q -p warren-management -p warren-worker -p warren-cli --bins
fi
rm -rf "$WORK" && mkdir -p "$WORK/fn"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # They are not this shell's children (started in command substitutions): wait for them
    # to go, up to 30 s, before the database can be dropped.
    for _ in $(seq 60); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.5
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS warren_instr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS warren_instr" -c "CREATE DATABASE warren_instr" >/dev/null
grind() { # name, then the command; prints the pid
    local name=$1; shift
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.%p.out" "$@" >"$WORK/$name.log" 2>&1 &
    echo $!
}

MGMT=$(grind management "$BIN/warren-management" --amqp "$AMQP" --store "$STORE" --listen "127.0.0.1:$PORT" --admin-key "$KEY")
pids+=("$MGMT")
until curl -sf "$BASE/healthz" >/dev/null; do
    kill -0 "$MGMT" 2>/dev/null || { echo "management did not start: see $WORK/management.log" >&2; exit 1; }
    sleep 0.5
done
printf 'name = "%s"\nruntime = "echo"\npool = "%s"\n' "$FN" "$POOL" >"$WORK/fn/function.toml"
"$BIN/warren" --url "$BASE" --key "$KEY" publish "$WORK/fn" >/dev/null
WORKER=$(grind worker "$BIN/warren-worker" --amqp "$AMQP" --store "$STORE" --pool "$POOL" --concurrency 64 --cache-dir "$WORK/cache")
pids+=("$WORKER")

invoke_sync() {
    curl -sf -X POST -H "Authorization: Bearer $KEY" --data '{"n": 0}' "$BASE/api/functions/$FN/invoke?timeout_ms=60000"
}
# Warm up: the worker consumes, both processes have their connections and caches.
until invoke_sync 2>/dev/null | grep -q '"succeeded"'; do
    kill -0 "$WORKER" 2>/dev/null || { echo "the worker did not start: see $WORK/worker.log" >&2; exit 1; }
    sleep 0.5
done
for _ in $(seq 50); do invoke_sync >/dev/null; done

finished() {
    psql -qtA "$STORE" -c "SELECT count(*) FROM warren_invocations WHERE function = '$FN' AND status NOT IN ('queued', 'running')"
}
# Instructions each process runs while `send` sends `count` invocations and their outcomes are
# stored: counters zeroed before, dumped (named `label`) after.
measure() { # label, send function, count
    local label=$1 send=$2 count=$3 before
    before=$(finished)
    callgrind_control -z "$MGMT" >/dev/null
    callgrind_control -z "$WORKER" >/dev/null
    "$send"
    until [ "$(finished)" -ge $((before + count)) ]; do sleep 0.2; done
    callgrind_control -d "$label" "$MGMT" >/dev/null
    callgrind_control -d "$label" "$WORKER" >/dev/null
    echo "$label" >>"$WORK/runs"
}

one_each() {
    local cfg="$WORK/one-each.curl"
    : >"$cfg"
    for i in $(seq "$N"); do printf 'url = "%s/api/functions/%s/invoke?mode=async"\n' "$BASE" "$FN" >>"$cfg"; done
    curl -sS --parallel --parallel-max 64 -X POST -H "Authorization: Bearer $KEY" --data '{"n": 1, "pad": "................................"}' -K "$cfg" >/dev/null
}
bulk() {
    local body="$WORK/bulk.ndjson" cfg="$WORK/bulk.curl"
    : >"$body"
    for i in $(seq "$BULK"); do echo '{"n": 1, "pad": "................................"}' >>"$body"; done
    : >"$cfg"
    for i in $(seq $((N / BULK))); do printf 'url = "%s/api/functions/%s/invocations"\n' "$BASE" "$FN" >>"$cfg"; done
    curl -sS --parallel --parallel-max 4 -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/x-ndjson' --data-binary "@$body" -K "$cfg" >/dev/null
}
batch() {
    local body="$WORK/batch.ndjson"
    : >"$body"
    for i in $(seq "$N"); do echo '{"n": 1, "pad": "................................"}' >>"$body"; done
    curl -sf -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/x-ndjson' --data-binary "@$body" "$BASE/api/batches?function=$FN" -o /dev/null
}

echo "counting instructions under callgrind (N = $N per path; slow: valgrind runs each process about 50 times slower)" >&2
measure one-each one_each "$N"
measure bulk bulk $(( (N / BULK) * BULK ))
measure batch batch "$N"

python3 - "$WORK" "$N" "$BULK" "$MGMT" "$WORKER" <<'EOF'
import glob, os, re, subprocess, sys

work, n, bulk, mgmt, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
runs = open(os.path.join(work, "runs")).read().split()

def dump(role, pid, label):
    """The dump callgrind_control -d wrote for this label (the trigger is in its header)."""
    for path in sorted(glob.glob(os.path.join(work, f"{role}.{pid}.out.*"))):
        with open(path, errors="replace") as f:
            head = f.read(4096)
        if re.search(rf"^desc: Trigger: dump {re.escape(label)}$", head, re.M):
            return path
    raise SystemExit(f"no callgrind dump of {role} for {label}")

def total(path):
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")

per = {"one-each": n, "bulk": (n // bulk) * bulk, "batch": n}
what = {"one-each": "one HTTP request per invocation (async)", "bulk": f"bulk invokes of {bulk}", "batch": "one NDJSON batch"}
cpu = open("/proc/cpuinfo").read()
model = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
vg = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
print(f"Instructions per invocation (callgrind, {vg}; {os.cpu_count()} cores, {model}; PostgreSQL store, echo function, 1 worker of concurrency 64)")
print(f"{'path':<44} {'N':>6} {'management':>12} {'worker':>10} {'both':>10}")
print(f"{'-'*44} {'-'*6} {'-'*12} {'-'*10} {'-'*10}")
for label in runs:
    m = total(dump("management", mgmt, label)) / per[label]
    w = total(dump("worker", worker, label)) / per[label]
    print(f"{what[label]:<44} {per[label]:>6} {m:>12,.0f} {w:>10,.0f} {m + w:>10,.0f}")

# Where management's instructions go on the one-request path, by the crate of the function
# they ran in (the first crate named in its symbol other than core, alloc and std: a generic
# of the standard library instantiated for hyper counts as hyper's). Frames that were running
# when the counters were zeroed (the threads' run loops) come out of callgrind with their whole
# subtree as their own cost; entries over 90 % of the total are those, and are left out.
path = dump("management", mgmt, "one-each")
all_ir = total(path)
out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", path], capture_output=True, text=True).stdout
by_crate = {}
for line in out.splitlines():
    m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)", line)
    if not m or "PROGRAM TOTALS" in line:
        continue
    ir, where = int(m.group(1).replace(",", "")), m.group(2)
    if ir > all_ir * 0.9:
        continue
    symbol = re.sub(r"^\S*?\.(rs|c|S|h):", "", where).split(" [")[0]
    heads = re.findall(r"(?:^|[<\s,(&*\[])([A-Za-z_][A-Za-z0-9_]*)::", symbol)
    crates = [c for c in heads if c not in ("core", "alloc", "std")]
    if crates:
        name = "Warren's own code" if crates[0].startswith("warren_") else crates[0]
    elif "::" in symbol:
        name = "Rust std (core, alloc, std)"
    elif re.search(r"malloc|free|memmove|memcpy|memset|memcmp|_int_|arena|unlink_chunk", symbol):
        name = "allocator and memcpy (C)"
    else:
        name = "other (libc, unknown)"
    by_crate[name] = by_crate.get(name, 0) + ir
print()
print("Management, one HTTP request per invocation: instructions by crate (exclusive; the 16 largest)")
print(f"{'crate':<44} {'per invocation':>15} {'share':>7}")
print(f"{'-'*44} {'-'*15} {'-'*7}")
ranked = sorted(by_crate.items(), key=lambda kv: -kv[1])
for name, ir in ranked[:16]:
    print(f"{name:<44} {ir / per['one-each']:>15,.0f} {100 * ir / all_ir:>6.1f}%")
rest = sum(ir for _, ir in ranked[16:])
print(f"{'the rest':<44} {rest / per['one-each']:>15,.0f} {100 * rest / all_ir:>6.1f}%")

# By stage: the inclusive cost of the functions that do each step.
out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=yes", "--auto=no", path], capture_output=True, text=True).stdout
stages = [
    ("the HTTP connection task, all of it", r"warren_management::http::serve::"),
    ("  HTTP/1.1 request head parsing (hyper)", r"hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse"),
    ("  authentication (the API key, its level)", r"warren_management::auth::check::"),
    ("  the invoke route (record, publish, answer)", r"warren_management::api::invoke::"),
    ("record insert (group commit, one statement)", r"warren_store::group::Grouped<I,O>::start::"),
    ("  the statement's SQL text (value_rows)", r"warren_store::sql::value_rows"),
    ("publish with confirm (Invoker::publish_recorded)", r"warren_management::invoke::Invoker::publish_recorded::"),
    ("AMQP connection loop (lapin's frames in/out)", r"lapin::io_loop::IoLoop<RK,C>::run"),
    ("  confirms received (basic.ack)", r"lapin::channel::Channel::receive_basic_ack"),
]
print()
print("Management, one HTTP request per invocation: inclusive instructions of the functions doing each step (steps overlap; indented ones are inside the one above)")
print(f"{'step':<44} {'per invocation':>15} {'share':>7}  function")
print(f"{'-'*44} {'-'*15} {'-'*7}  {'-'*8}")
rows = []
for line in out.splitlines():
    m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)", line)
    if m and "PROGRAM TOTALS" not in line and int(m.group(1).replace(",", "")) <= all_ir * 0.9:
        rows.append((int(m.group(1).replace(",", "")), m.group(2)))
for step, pat in stages:
    hits = [(ir, sym) for ir, sym in rows if re.search(pat, sym)]
    if not hits:
        print(f"{step:<44} {'-':>15} {'':>7}  (no function matched)")
        continue
    ir, sym = max(hits)
    short = re.sub(r"^\S*\.(rs|c|S):", "", sym).split(" [")[0]
    print(f"{step:<44} {ir / per['one-each']:>15,.0f} {100 * ir / max(all_ir, 1):>6.1f}%  {short[:90]}")
EOF
