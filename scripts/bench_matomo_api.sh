#!/usr/bin/env bash
# Matomo HTTP API source, end to end, beside the existing sync's way of loading and the floor.
#
#   scripts/with-services.sh scripts/bench_matomo_api.sh [ETL_BINARY]    (bench.sh runs it last)
#   BENCH_API_VISITS=20000 scripts/with-services.sh scripts/bench_matomo_api.sh   (a quick check)
#
# A local Matomo API (a Python server written below, on loopback) serves BENCH_API_VISITS
# synthetic visits of 3 to 7 actions (5 on average) over BENCH_API_DAYS days, 500 per page, gzip.
# Measured, on the same rows:
#   1. etl run --source matomo-api: extract (HTTP, JSON -> Parquet) + transform + load, rows/s;
#   2. the existing sync's way of writing them: one INSERT ... ON CONFLICT (action_id) DO
#      NOTHING per action, 10 in flight (10 psql sessions, one statement per round trip);
#   3. the floor: psql \copy of the same rows into an empty table of the same shape.
# Prints a report section on stdout (bench.sh appends it to target/bench/report.txt); logs in
# target/bench/logs/matomo_api.*. Needs ETL_TEST_POSTGRES_URL (the test services), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
etl=${1:-$repo/target/release/etl}
VISITS=${BENCH_API_VISITS:-100000}
DAYS=${BENCH_API_DAYS:-10}
DB=etl_bench_api
TOKEN=bench-token-$$

die() { echo "bench_matomo_api.sh: error: $*" >&2; exit 1; }
progress() { echo "bench_matomo_api.sh: [$(date +%H:%M:%S)] $*" >&2; }
[[ $VISITS =~ ^[1-9][0-9]*$ && $DAYS =~ ^[1-9][0-9]*$ ]] || die "BENCH_API_VISITS and BENCH_API_DAYS must be positive integers"
[[ -n ${ETL_TEST_POSTGRES_URL:-} ]] || die "ETL_TEST_POSTGRES_URL is not set: run through scripts/with-services.sh"
[[ -x $etl ]] || die "no etl binary at $etl (cargo build --release)"
for c in psql python3 awk; do command -v "$c" >/dev/null || die "$c not found"; done

logs=$repo/target/bench/logs
mkdir -p "$logs"
work=$(mktemp -d /tmp/etl-bench-api.XXXXXX)
server_pid=
cleanup() {
    local rc=$?
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
    rm -rf "$work"
    psql "$ETL_TEST_POSTGRES_URL" -X -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    ((rc == 0)) || echo "bench_matomo_api.sh: FAILED (exit $rc); logs: $logs/matomo_api.*" >&2
    exit $rc
}
trap cleanup EXIT

url=${ETL_TEST_POSTGRES_URL%/*}/$DB
pg() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
pg_value() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$url" -c "$1"; }
pg "$ETL_TEST_POSTGRES_URL" -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"

# ---------------------------------------------------------------- the local Matomo API
first_day=$(date -u -d "-$((DAYS - 1)) days" +%F)
cat >"$work/server.py" <<'PY'
import datetime, gzip, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

token, per_day, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
first = datetime.date.fromisoformat(sys.argv[4])
utc = datetime.timezone.utc

def visit(k, i):
    base = int(datetime.datetime.combine(first + datetime.timedelta(days=k), datetime.time(0), utc).timestamp())
    base += (i * 86000) // max(per_day, 1)
    n = 3 + i % 5
    return {
        "idSite": "1", "idVisit": str(k * 10_000_000 + i + 1), "visitorId": "%016x" % (i * 7919),
        "actions": str(n), "country": "France", "region": "Île-de-France", "city": "Paris",
        "operatingSystemName": "Windows", "deviceModel": "", "deviceBrand": "Unknown",
        "visitDuration": str(n * 30), "daysSinceFirstVisit": str(i % 30),
        "visitorType": "returning" if i % 3 else "new", "siteName": "Bench",
        "userId": None if i % 2 else "user%d" % i, "resolution": "1920x1080",
        "referrerType": "direct", "referrerName": "", "firstActionTimestamp": base,
        "lastActionTimestamp": base + 5 * n, "dimension1": "pro" if i % 4 == 0 else None,
        "experiments": [],
        "actionDetails": [{
            "type": "event" if j % 2 else "action", "url": "https://bench.example/p/%d?v=%d" % (j, i),
            "title": "Page %d" % j, "pageIdAction": str(j + 1), "idpageview": "%06x" % (i * 10 + j),
            "timestamp": base + 5 * j, "timeSpent": "5" if j % 2 else 5,
            "eventCategory": "cat" if j % 2 else None, "eventAction": "act" if j % 2 else None,
            "eventValue": 1.5 if j % 2 else None, "dimension2": "x" if j == 0 else None,
            "customVariables": {"1": {"customVariableName1": "plan", "customVariableValue1": "pro"}} if j == 0 else None,
        } for j in range(n)],
    }

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if form.get("token_auth") != token:
            body = {"result": "error", "message": "You can't access this resource"}
        elif form.get("method") == "SitesManager.getSiteFromId":
            body = {"idsite": form.get("idSite"), "timezone": "UTC"}
        else:
            k = (datetime.date.fromisoformat(form["date"]) - first).days
            offset, limit = int(form["filter_offset"]), int(form["filter_limit"])
            body = [visit(k, i) for i in range(offset, min(offset + limit, per_day))] if 0 <= k < days else []
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            data = gzip.compress(data, 1)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
PY
per_day=$(((VISITS + DAYS - 1) / DAYS))
python3 "$work/server.py" "$TOKEN" "$per_day" "$DAYS" "$first_day" >"$work/port" 2>"$logs/matomo_api.server.err" &
server_pid=$!
for _ in $(seq 50); do [[ -s $work/port ]] && break; sleep 0.1; done
port=$(head -n 1 "$work/port")
[[ $port =~ ^[0-9]+$ ]] || die "the local API did not start: $(cat "$logs/matomo_api.server.err")"

# ------------------------------------------------------------------ 1. etl end to end
mkdir -p "$work/config"
cp "$repo/config/matomo_api.yaml" "$work/config/"
progress "etl run --source matomo-api ($VISITS visits over $DAYS days)"
t0=$(date +%s.%N)
(cd "$work" && env MATOMO_URL="http://127.0.0.1:$port" MATOMO_KEY="$TOKEN" MATOMO_SITE=1 \
    STARTDATE="$first_day" DATABASE_URL="$url" "$etl" --quiet --config config --staging staging \
    run --source matomo-api) >"$logs/matomo_api.etl.out" 2>"$logs/matomo_api.etl.err" ||
    die "etl failed: $(tail -n 20 "$logs/matomo_api.etl.err")"
t1=$(date +%s.%N)
etl_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
rows=$(pg_value "SELECT count(*) FROM matomo")
((rows > 0)) || die "etl loaded no rows"
# Each stage's own seconds, from the manifests (extract includes waiting for the local API).
run_dir=$(find "$work/staging" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | sort | tail -n 1)
stage_s() {
    local v
    v=$(python3 "$repo/scripts/manifest_value.py" "$run_dir/$1/manifest.json" '*' seconds) || die "no $1 manifest"
    awk -v x="$v" 'BEGIN { printf "%.3f", x }'
}
extract_s=$(stage_s extract) transform_s=$(stage_s transform) load_s=$(stage_s load)

# ------------------------------------- 2. one INSERT per action, 10 in flight (the sync's way)
pg "$url" -c "CREATE TABLE bench_insert (LIKE matomo INCLUDING ALL)" \
    -c "CREATE TABLE bench_copy (LIKE matomo INCLUDING ALL)"
gen=$(pg_value "SELECT 'SELECT ''INSERT INTO bench_insert (' || string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position)
    || ') VALUES ('' || ' || string_agg('quote_nullable(' || quote_ident(column_name) || ')', ' || '', '' || ' ORDER BY ordinal_position)
    || ' || '') ON CONFLICT (action_id) DO NOTHING;'' FROM matomo'
    FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'matomo'")
psql -X -q -t -A -v ON_ERROR_STOP=1 "$url" -c "$gen" | awk -v dir="$work" '{ print > (dir "/insert_" (NR % 10) ".sql") }'
progress "one INSERT per action, 10 sessions in flight ($rows rows)"
t0=$(date +%s.%N)
inserts=()
for f in "$work"/insert_*.sql; do
    psql -X -q -v ON_ERROR_STOP=1 "$url" -f "$f" >/dev/null 2>>"$logs/matomo_api.insert.err" &
    inserts+=($!)
done
for pid in "${inserts[@]}"; do wait "$pid" || die "an INSERT session failed: $(tail -n 5 "$logs/matomo_api.insert.err")"; done
t1=$(date +%s.%N)
insert_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
[[ $(pg_value "SELECT count(*) FROM bench_insert") == "$rows" ]] || die "the INSERT way did not load $rows rows"

# ------------------------------------------------------------------ 3. psql \copy floor
pg "$url" -c "\\copy matomo TO '$work/rows.copy'"
progress "psql \\copy of the same rows"
t0=$(date +%s.%N)
pg "$url" -c "\\copy bench_copy FROM '$work/rows.copy'"
t1=$(date +%s.%N)
copy_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')

rate() { awk -v c="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", c / s; else print "n/a" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'; }
{
    echo ""
    echo "== Matomo HTTP API source: $VISITS visits, $rows actions (rows), served by a local API"
    printf '%-62s  %10s  %9s  %9s  %s\n' "what" "rows" "seconds" "rows/s" "vs etl"
    printf '%-62s  %10s  %9s  %9s  %s\n' "etl run --source matomo-api (HTTP + JSON + transform + load)" "$rows" "$etl_s" "$(rate "$rows" "$etl_s")" "1.00x"
    printf '%-62s  %10s  %9s  %9s  %s\n' "  of which extract (HTTP from the local API, JSON -> Parquet)" "-" "$extract_s" "-" "-"
    printf '%-62s  %10s  %9s  %9s  %s\n' "  of which transform" "$rows" "$transform_s" "$(rate "$rows" "$transform_s")" "-"
    printf '%-62s  %10s  %9s  %9s  %s\n' "  of which load (COPY + upsert, one transaction)" "$rows" "$load_s" "$(rate "$rows" "$load_s")" "-"
    printf '%-62s  %10s  %9s  %9s  %s\n' "one INSERT per action, 10 in flight (the existing sync's way)" "$rows" "$insert_s" "$(rate "$rows" "$insert_s")" "$(ratio "$etl_s" "$insert_s")"
    printf '%-62s  %10s  %9s  %9s  %s\n' "psql \\copy of the same rows (floor, load only)" "$rows" "$copy_s" "$(rate "$rows" "$copy_s")" "$(ratio "$etl_s" "$copy_s")"
    echo "   vs etl = etl's seconds over that row's seconds (below 1.00x: etl is faster); etl's time"
    echo "   includes fetching and decoding the API's JSON, the other two only write the rows."
    echo "   The local API (Python) shares the 2 cores with etl while etl runs. etl's load alone"
    echo "   against the same rows: $(ratio "$insert_s" "$load_s") faster than the INSERT way, $(ratio "$load_s" "$copy_s") the \\copy floor's time."
    echo "   Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$logs/matomo_api.report.txt"
