#!/usr/bin/env bash
# `make bench`: throughput and memory of each etl stage next to its floor, at scale.
#
#   scripts/with-services.sh scripts/bench.sh        (what `make bench` runs)
#   BENCH_USERS=20000 BENCH_ACTIONS=50000 make bench  (a quick check)
#
# Settings (environment):
#   BENCH_USERS      SmartDiet users in the generated mongodump          (default 1000000)
#   BENCH_ACTIONS    rows generated in matomo_log_link_visit_action      (default 1000000)
#   BENCH_RSS_SCALE  1: also extract+transform a 5x-users dump to see how peak RSS scales;
#                    0: skip that (it is the slowest part)               (default 1)
#   BENCH_TRANSFORM_REPEAT  runs of each transform variant (1 and 2 threads); the median
#                    is reported, with the range                        (default 3)
#   BENCH_KEEP       1: keep the bench databases afterwards              (default 0)
#
# Needs the test services (scripts/with-services.sh): PostgreSQL at ETL_TEST_POSTGRES_URL,
# MariaDB at MATOMO_HOST/PORT/USER/PASSWORD, ETL_TEST_MARIADB_OUTFILE_DIR.
# Creates and drops: MariaDB database etl_bench; PostgreSQL databases etl_bench_empty
# (etl's Matomo loads), etl_bench_full (the psql floors), etl_bench_users (SmartDiet loads).
# Works in a temporary folder (removed at the end). The report is printed and saved to
# target/bench/report.txt; every command's output and /usr/bin/time -v lands in target/bench/logs/.
# Every figure printed comes from a command that ran in this invocation; any failure stops
# the script with the failing command's output.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

die() {
    echo "bench.sh: error: $*" >&2
    exit 1
}
# Progress lines carry commands, and commands carry URLs: the password never shows.
progress() { echo "bench.sh: [$(date +%H:%M:%S)] $*" | sed -E 's#(://[^:@/ ]*):[^@ ]*@#\1:***@#g' >&2; }

# ------------------------------------------------------------------ settings

BENCH_USERS=${BENCH_USERS:-1000000}
BENCH_ACTIONS=${BENCH_ACTIONS:-1000000}
BENCH_RSS_SCALE=${BENCH_RSS_SCALE:-1}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_TRANSFORM_REPEAT=${BENCH_TRANSFORM_REPEAT:-3}
RSS_FACTOR=5
for v in BENCH_USERS BENCH_ACTIONS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ $BENCH_TRANSFORM_REPEAT =~ ^[1-9]$ ]] || die "BENCH_TRANSFORM_REPEAT must be 1-9, got '$BENCH_TRANSFORM_REPEAT'"
[[ $BENCH_RSS_SCALE =~ ^[01]$ ]] || die "BENCH_RSS_SCALE must be 0 or 1, got '$BENCH_RSS_SCALE'"
((BENCH_ACTIONS >= 10)) || die "BENCH_ACTIONS must be at least 10"
for v in ETL_TEST_POSTGRES_URL ETL_TEST_MARIADB_OUTFILE_DIR MATOMO_HOST MATOMO_PORT MATOMO_USER MATOMO_PASSWORD; do
    [[ -n ${!v:-} ]] || die "$v is not set: run through scripts/with-services.sh (make bench)"
done
for c in /usr/bin/time psql mariadb awk git python3; do
    command -v "$c" >/dev/null || die "$c not found"
done

PG_BASE=${ETL_TEST_POSTGRES_URL%/*}
PG_ADMIN=$ETL_TEST_POSTGRES_URL
MY_DB=etl_bench
DB_EMPTY=etl_bench_empty
DB_FULL=etl_bench_full
DB_USERS=etl_bench_users
DB_HIST0=etl_bench_hist0
DB_HIST=etl_bench_hist
DB_USERS0=etl_bench_users0
DB_PGSRC=etl_bench_pgsrc
DB_PGDST=etl_bench_pgdst
DB_PGFLOOR=etl_bench_pgfloor
LVA=matomo_log_link_visit_action
OUTFILE=$ETL_TEST_MARIADB_OUTFILE_DIR/etl_bench_lva_$$.tsv

out_dir=$repo/target/bench
logs=$out_dir/logs
report=$out_dir/report.txt
rm -rf "$logs" "$report" "$report.partial"
mkdir -p "$logs"

work=$(mktemp -d /tmp/etl-bench.XXXXXX)
cleanup() {
    local rc=$?
    rm -rf "$work"
    rm -f "$OUTFILE" 2>/dev/null || true
    if [[ $BENCH_KEEP != 1 ]]; then
        psql "$PG_ADMIN" -X -q -c "DROP DATABASE IF EXISTS $DB_EMPTY WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_FULL WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_USERS WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_USERS0 WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_HIST0 WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_HIST WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_PGSRC WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_PGDST WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS $DB_PGFLOOR WITH (FORCE)" >/dev/null 2>&1 || true
        my -e "DROP DATABASE IF EXISTS $MY_DB" >/dev/null 2>&1 || true
    fi
    if ((rc != 0)); then
        echo "bench.sh: FAILED (exit $rc); partial report: $report.partial; logs: $logs" >&2
    fi
    exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------- helpers

export MYSQL_PWD=$MATOMO_PASSWORD # the test server's well-known password, kept off command lines
my() {
    mariadb --no-defaults -h "$MATOMO_HOST" -P "$MATOMO_PORT" \
        -u "$MATOMO_USER" --batch --skip-column-names "$@"
}
pg() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
pg_value() { # URL SQL: one value, or die
    local v
    v=$(psql -X -q -t -A -v ON_ERROR_STOP=1 "$1" -c "$2") || die "psql failed: $2"
    [[ -n $v ]] || die "psql returned nothing for: $2"
    echo "$v"
}
my_value() { # SQL (in etl_bench): one value, or die
    local v
    v=$(my "$MY_DB" -e "$1") || die "mariadb failed: $1"
    [[ -n $v ]] || die "mariadb returned nothing for: $1"
    echo "$v"
}
fresh_pg_db() {
    pg "$PG_ADMIN" -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
    pg_value "$PG_BASE/$1" "SELECT 1" >/dev/null
}

strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# run_timed NAME CMD...: runs CMD under /usr/bin/time -v, output in $logs/NAME.{out,err,time}.
# Sets WALL (wall seconds, measured around the command) and RSS_KB (peak RSS, kB).
# A failing command stops the bench with its output.
run_timed() {
    local name=$1 t0 t1 rc=0
    shift
    progress "$name: $*"
    t0=$(date +%s.%N)
    /usr/bin/time -v -o "$logs/$name.time" "$@" >"$logs/$name.out" 2>"$logs/$name.err" || rc=$?
    t1=$(date +%s.%N)
    if ((rc != 0)); then
        {
            echo "bench.sh: COMMAND FAILED (exit $rc): $name"
            echo "  command: $*"
            echo "  cwd: $PWD"
            echo "---- stdout (last 60 lines) ----"
            tail -n 60 "$logs/$name.out" | strip_ansi
            echo "---- stderr (last 60 lines) ----"
            tail -n 60 "$logs/$name.err" | strip_ansi
            echo "----"
        } >&2
        exit 1
    fi
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    RSS_KB=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$logs/$name.time")
    [[ $RSS_KB =~ ^[0-9]+$ ]] || die "$name: no 'Maximum resident set size' in $logs/$name.time"
    CPU_PCT=$(awk -F': ' '/Percent of CPU this job got/ { print $2 }' "$logs/$name.time")
    [[ $CPU_PCT =~ ^[0-9]+%$ ]] || CPU_PCT="?"
}

# Figures come from the manifest each etl stage writes (typed fields), never from the printed
# summary. keep_manifest NAME STAGING STAGE copies the newest run's manifest of that stage to
# $logs/NAME.json right after the command, before another run overwrites it.
keep_manifest() {
    local run
    run=$(find "$2" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%f\n' | sort | tail -n 1)
    [[ -n $run && -f $2/$run/$3/manifest.json ]] || die "$1: no $3 manifest under $2"
    cp "$2/$run/$3/manifest.json" "$logs/$1.json"
}
# mf NAME ENTRY FIELD: FIELD (rows, seconds, counts.inserted, ...) of ENTRY in NAME's manifest;
# ENTRY '*' sums it over every entry. Dies when absent.
mf() {
    local v
    v=$(python3 "$repo/scripts/manifest_value.py" "$logs/$1.json" "$2" "$3") || die "$1: cannot read $3 of $2"
    [[ $v =~ ^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]] || die "$1: $3 of $2 is not a number: $v"
    echo "$v"
}
# mf_top NAME N FIELD: the N entries with the largest FIELD, "name<TAB>value" per line.
mf_top() { python3 "$repo/scripts/manifest_value.py" "$logs/$1.json" --top "$2" "$3" || die "$1: cannot rank by $3"; }
# mf_count NAME: how many entries NAME's manifest has.
mf_count() { python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["entries"]))' "$logs/$1.json"; }

# Number formatting. Never invents a figure: a rate over a zero time is "n/a".
int() { awk -v x="$1" 'BEGIN { s = sprintf("%.0f", x); n = length(s); o = "";
    for (i = 1; i <= n; i++) { o = o substr(s, i, 1); if ((n - i) % 3 == 0 && i < n && substr(s, i, 1) != "-") o = o "," }
    print o }'; }
secs() { awk -v x="$1" 'BEGIN { printf "%.2f", x }'; }
rate() { # COUNT SECONDS -> count per second, formatted
    if awk -v s="$2" 'BEGIN { exit !(s > 0) }'; then
        int "$(awk -v c="$1" -v s="$2" 'BEGIN { print c / s }')"
    else echo "n/a"; fi
}
ratio() { # A B -> A/B with 2 decimals and an x
    if awk -v b="$2" 'BEGIN { exit !(b > 0) }'; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'
    else echo "n/a"; fi
}
rate_raw() { awk -v c="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.3f", c / s; else print 0 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
mbps() { # BYTES SECONDS
    if awk -v s="$2" 'BEGIN { exit !(s > 0) }'; then
        awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1e6 / s }'
    else echo "n/a"; fi
}
add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
dir_bytes() { du -sb "$1" | awk '{ print $1 }'; }

# The report: out() prints and appends; table reads tab-separated rows (first = header).
out() {
    printf '%s\n' "$*"
    printf '%s\n' "$*" >>"$report.partial"
}
table() { # [left]: no right-aligned numbers
    awk -F'\t' -v left="${1:-}" '
        { n = NR; for (i = 1; i <= NF; i++) { c[n, i] = $i; if (length($i) > w[i]) w[i] = length($i) }
          if (NF > nf) nf = NF; cols[n] = NF }
        END {
            for (r = 1; r <= n; r++) {
                line = ""
                for (i = 1; i <= cols[r]; i++) {
                    v = c[r, i]
                    num = (left == "" && i > 1 && v ~ /^(-|n\/a|[-+]?[0-9][0-9,]*(\.[0-9]+)?x?)$/)
                    cell = num ? sprintf("%" w[i] "s", v) : sprintf("%-" w[i] "s", v)
                    line = line (i > 1 ? "  " : "") cell
                }
                sub(/ +$/, "", line); print line
                if (r == 1) {
                    line = ""
                    for (i = 1; i <= nf; i++) { d = sprintf("%" w[i] "s", ""); gsub(/ /, "-", d); line = line (i > 1 ? "  " : "") d }
                    print line
                }
            }
        }' | tee -a "$report.partial"
}
section() {
    out ""
    out "== $*"
}
note() { out "   $*"; }

# ---------------------------------------------------------------------- build

progress "building (cargo build --release --bins --examples)"
cargo build --release --bins --examples >"$logs/build.out" 2>&1 || {
    tail -n 60 "$logs/build.out" >&2
    die "cargo build failed"
}
# Copies: others may rebuild target/release while the bench runs.
mkdir -p "$work/bin"
cp "$repo/target/release/etl" "$repo/target/release/examples/gen_dump" "$repo/target/release/examples/bson_floor" "$work/bin/" ||
    die "missing target/release/etl or target/release/examples/{gen_dump,bson_floor} after the build"
etl=$work/bin/etl
gen_dump=$work/bin/gen_dump
cp -r "$repo/config" "$work/config"
cd "$work"

# ---------------------------------------------------------------- environment

commit=$(git -C "$repo" rev-parse --short HEAD)
dirty=$(git -C "$repo" status --porcelain --untracked-files=no -- src tests examples config Cargo.toml Cargo.lock | wc -l)
pg_version=$(pg_value "$PG_ADMIN" "SHOW server_version")
my_version=$(my -e "SELECT VERSION()") || die "cannot reach MariaDB"
mem_total_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)

out "etl benchmark -- $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
{
    printf 'item\tvalue\n'
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'cpu\t%s\n' "${cpu_model:-unknown}"
    printf 'memory\t%s GiB\n' "$(awk -v k="$mem_total_kb" 'BEGIN { printf "%.1f", k / 1048576 }')"
    printf 'etl commit\t%s%s\n' "$commit" "$( ((dirty > 0)) && echo " + $dirty uncommitted file(s) in src/tests/examples/config/Cargo.*")"
    printf 'rustc\t%s\n' "$(rustc --version)"
    printf 'PostgreSQL\t%s\n' "$pg_version"
    printf 'MariaDB\t%s\n' "$my_version"
    printf 'BENCH_USERS\t%s\n' "$BENCH_USERS"
    printf 'BENCH_ACTIONS\t%s\n' "$BENCH_ACTIONS"
    printf 'BENCH_RSS_SCALE\t%s\n' "$BENCH_RSS_SCALE"
    printf 'BENCH_TRANSFORM_REPEAT\t%s\n' "$BENCH_TRANSFORM_REPEAT"
    printf 'load average at start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
} | table left
note "Test servers (scripts/services.sh): fsync off, shared_buffers 256MB, InnoDB buffer pool 256M."
note "Wall seconds are measured around each command; peak RSS is /usr/bin/time -v's maximum RSS."
note "Other users of the same test servers (e.g. a concurrent make test) would disturb these figures."

# ===================================================================== 1. Data
section "1. Data"

# SmartDiet mongodump.
run_timed gen_dump "$gen_dump" "$work/dump" "$BENCH_USERS"
gen_wall=$WALL
dump=$work/dump/smartdiet
[[ -s $dump/users.bson ]] || die "gen_dump wrote no $dump/users.bson"
users_bytes=$(stat -c %s "$dump/users.bson")
dump_bytes=$(cat "$dump"/*.bson | wc -c)
dump_files=$(ls "$dump"/*.bson | wc -l)

# Matomo in MariaDB: the fixture schema, then rows generated in SQL.
progress "MariaDB: database $MY_DB, fixture schema"
my -e "DROP DATABASE IF EXISTS $MY_DB; CREATE DATABASE $MY_DB CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"
my "$MY_DB" <"$repo/tests/fixtures/matomo/schema.sql"

# The fixture's columns must be exactly the config's, in order.
config_columns() { # TABLE: the column names config/matomo_schemas.yaml declares, one per line
    awk -v t="$1" '
        /^[A-Za-z_][A-Za-z0-9_]*:/ { inside = ($0 ~ "^" t ":") }
        inside && /- *\{ *name:/ { s = $0; sub(/.*name: */, "", s); sub(/[ ,}].*/, "", s); print s }' \
        "$repo/config/matomo_schemas.yaml"
}
for t in matomo_log_visit $LVA matomo_log_action; do
    want=$(config_columns "$t")
    have=$(my "$MY_DB" -e "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$t' ORDER BY ORDINAL_POSITION")
    [[ -n $want ]] || die "no columns for $t in config/matomo_schemas.yaml"
    [[ $want == "$have" ]] || die "columns of $t differ between config/matomo_schemas.yaml and tests/fixtures/matomo/schema.sql:
$(diff <(echo "$want") <(echo "$have") || true)"
done

N=$BENCH_ACTIONS
V=$(((N + 9) / 10))        # visits: 10 actions each
VISITORS=$(((V + 2) / 3))  # visitors: ~3 visits each
A=5000                     # log_action rows (URLs, titles, event names)
YEAR=31536000              # server_time spans 2024 (seconds)
CHUNK=250000

gen_sql=$work/gen_matomo.sql
{
    echo "SET time_zone = '+00:00';"
    # log_action: URLs and titles ~30-60 characters.
    cat <<EOF
INSERT INTO matomo_log_action (idaction, name, hash, type, url_prefix)
SELECT seq,
       CONCAT(ELT(1 + seq % 2, 'smartdiet.fr/app/', 'Smartdiet - '),
              ELT(1 + seq % 6, 'recettes', 'menus', 'journal', 'coaching', 'profil', 'quizz'),
              '/', LEFT(SHA1(seq), 8 + seq % 25)),
       0, 1 + seq % 4, CASE WHEN seq % 2 = 0 THEN 2 END
FROM seq_1_to_$A;
UPDATE matomo_log_action SET hash = CRC32(name);
EOF
    # log_visit: one row per visit, NOT NULL columns filled, text columns of realistic length.
    for ((lo = 1; lo <= V; lo += CHUNK)); do
        hi=$((lo + CHUNK - 1 < V ? lo + CHUNK - 1 : V))
        cat <<EOF
INSERT INTO matomo_log_visit (idvisit, idsite, idvisitor, visit_last_action_time, config_id,
  location_ip, profilable, user_id, visit_first_action_time, visit_goal_buyer, visit_goal_converted,
  visitor_returning, visitor_seconds_since_first, visitor_count_visits, visit_entry_idaction_name,
  visit_entry_idaction_url, visit_exit_idaction_name, visit_exit_idaction_url, visit_total_actions,
  visit_total_interactions, visit_total_searches, referer_keyword, referer_name, referer_type,
  referer_url, location_browser_lang, config_browser_engine, config_browser_name,
  config_browser_version, config_client_type, config_device_brand, config_device_model,
  config_device_type, config_os, config_os_version, visit_total_events, visitor_localtime,
  visitor_seconds_since_last, config_resolution, config_cookie, visit_total_time, location_city,
  location_country, location_latitude, location_longitude, location_region, last_idlink_va,
  custom_dimension_1)
SELECT seq, 1 + seq % 3, UNHEX(LPAD(HEX(1 + seq % $VISITORS), 16, '0')),
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL (seq * 10 * $YEAR DIV $N) SECOND,
       UNHEX(LEFT(MD5(seq), 16)), UNHEX(LPAD(HEX(3232235520 + seq % 65536), 8, '0')),
       seq % 2, CASE WHEN seq % 4 = 0 THEN CONCAT('user', seq % 100000, '@example.com') END,
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL (((seq - 1) * 10 + 1) * $YEAR DIV $N) SECOND,
       0, seq % 20 = 0, seq % 3 > 0, CASE WHEN seq % 3 > 0 THEN seq % 2592000 END, 1 + seq % 20,
       1 + seq % $A, 1 + (seq * 3) % $A, 1 + (seq * 5) % $A, 1 + (seq * 7) % $A, 10, 10,
       CASE WHEN seq % 50 = 0 THEN 1 END,
       CASE WHEN seq % 3 = 0 THEN ELT(1 + seq % 3, 'recette minceur', 'menu semaine', 'régime') END,
       CASE WHEN seq % 3 = 0 THEN 'Google' END, 1 + seq % 3,
       CASE WHEN seq % 3 = 0 THEN CONCAT('https://www.google.fr/search?q=recette+', LEFT(MD5(seq), 12)) END,
       'fr-fr,fr', 'Blink', ELT(1 + seq % 4, 'CH', 'FF', 'SF', 'EI'), CONCAT(100 + seq % 25, '.0'), 1,
       ELT(1 + seq % 3, 'Apple', 'Samsung', 'Xiaomi'), ELT(1 + seq % 3, 'iPhone', 'Galaxy S23', 'Redmi Note 12'),
       seq % 3, ELT(1 + seq % 3, 'IOS', 'AND', 'WIN'), CONCAT(10 + seq % 8, '.', seq % 4),
       seq % 5, SEC_TO_TIME(seq % 86400), CASE WHEN seq % 3 > 0 THEN seq % 604800 END,
       ELT(1 + seq % 3, '390x844', '1920x1080', '1366x768'), 1, seq % 3600,
       ELT(1 + seq % 5, 'Paris', 'Lyon', 'Marseille', 'Lille', 'Nantes'), 'fr',
       48.856613, 2.352222, ELT(1 + seq % 3, '75', '69', '13'), LEAST(seq * 10, $N),
       ELT(1 + seq % 4, 'free', 'premium', 'coaching', 'trial')
FROM seq_${lo}_to_${hi};
EOF
    done
    # log_link_visit_action: 10 actions per visit, 1 in 7 an event, server_time over 2024.
    for ((lo = 1; lo <= N; lo += CHUNK)); do
        hi=$((lo + CHUNK - 1 < N ? lo + CHUNK - 1 : N))
        cat <<EOF
INSERT INTO matomo_log_link_visit_action (idlink_va, idsite, idvisitor, idvisit, idaction_url_ref,
  idaction_name_ref, custom_float, pageview_position, server_time, idpageview, idaction_name,
  idaction_url, search_cat, search_count, time_spent_ref_action, idaction_product_cat,
  idaction_product_cat2, idaction_product_cat3, idaction_product_cat4, idaction_product_cat5,
  idaction_product_name, product_price, idaction_product_sku, idaction_event_action,
  idaction_event_category, idaction_content_interaction, idaction_content_name,
  idaction_content_piece, idaction_content_target, time_dom_completion, time_dom_processing,
  time_network, time_on_load, time_server, time_transfer, time_spent, custom_dimension_1,
  custom_dimension_2, custom_dimension_3, custom_dimension_4, custom_dimension_5)
SELECT seq, 1 + (1 + (seq - 1) DIV 10) % 3,
       UNHEX(LPAD(HEX(1 + (1 + (seq - 1) DIV 10) % $VISITORS), 16, '0')),
       1 + (seq - 1) DIV 10,
       CASE WHEN seq % 10 = 1 THEN 0 ELSE 1 + (seq * 7) % $A END,
       CASE WHEN seq % 10 = 1 THEN NULL ELSE 1 + (seq * 11) % $A END,
       CASE WHEN seq % 50 = 0 THEN (seq % 10000) / 7 END,
       1 + (seq - 1) % 10,
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL (seq * $YEAR DIV $N) SECOND,
       LEFT(MD5(seq), 6),
       CASE WHEN seq % 7 > 0 THEN 1 + (seq * 13) % $A END,
       CASE WHEN seq % 7 > 0 THEN 1 + (seq * 17) % $A END,
       CASE WHEN seq % 100 = 0 THEN ELT(1 + seq % 4, 'recettes', 'menus', 'ingrédients', 'coaching') END,
       CASE WHEN seq % 100 = 0 THEN seq % 40 END,
       seq % 600,
       CASE WHEN seq % 1000 = 0 THEN 1 + seq % $A END, NULL, NULL, NULL, NULL,
       CASE WHEN seq % 1000 = 0 THEN 1 + (seq * 3) % $A END,
       CASE WHEN seq % 1000 = 0 THEN 4.99 + seq % 50 END,
       CASE WHEN seq % 1000 = 0 THEN 1 + (seq * 5) % $A END,
       CASE WHEN seq % 7 = 0 THEN 1 + (seq * 19) % $A END,
       CASE WHEN seq % 7 = 0 THEN 1 + (seq * 23) % $A END,
       NULL, NULL, NULL, NULL,
       CASE WHEN seq % 7 > 0 THEN 200 + seq % 3000 END,
       CASE WHEN seq % 7 > 0 THEN 100 + seq % 1500 END,
       CASE WHEN seq % 7 > 0 THEN seq % 200 END,
       CASE WHEN seq % 7 > 0 THEN seq % 50 END,
       CASE WHEN seq % 7 > 0 THEN 20 + seq % 400 END,
       CASE WHEN seq % 7 > 0 THEN seq % 80 END,
       CASE WHEN seq % 10 = 0 THEN NULL ELSE seq % 900 END,
       ELT(1 + seq % 4, 'free', 'premium', 'coaching', 'trial'),
       CONCAT('/app/recettes/', LEFT(SHA1(seq), 10 + seq % 25)),
       CASE WHEN seq % 3 = 0 THEN CONCAT('programme-', 1 + seq % 12) END,
       NULL, NULL
FROM seq_${lo}_to_${hi};
EOF
    done
    echo "ANALYZE TABLE matomo_log_action, matomo_log_visit, matomo_log_link_visit_action;"
} >"$gen_sql"
run_timed gen_matomo bash -c 'mariadb --no-defaults -h "$0" -P "$1" -u "$2" --batch "$3" <"$4"' \
    "$MATOMO_HOST" "$MATOMO_PORT" "$MATOMO_USER" "$MY_DB" "$gen_sql"
gen_matomo_wall=$WALL

n_lva=$(my_value "SELECT COUNT(*) FROM $LVA")
n_visit=$(my_value "SELECT COUNT(*) FROM matomo_log_visit")
n_action=$(my_value "SELECT COUNT(*) FROM matomo_log_action")
((n_lva == N)) || die "$LVA has $n_lva rows, expected $N"
table_bytes() { my_value "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$1'"; }
lva_bytes=$(table_bytes $LVA)
visit_bytes=$(table_bytes matomo_log_visit)
action_bytes=$(table_bytes matomo_log_action)
lva_nulls=$(my_value "SELECT ROUND(100 * SUM(time_spent IS NULL) / COUNT(*), 1) FROM $LVA")
lva_span=$(my_value "SELECT CONCAT(MIN(server_time), ' .. ', MAX(server_time)) FROM $LVA")

{
    printf 'dataset\trows\tMB\tgenerated in s\tdetail\n'
    printf 'mongodump users.bson\t%s\t%s\t%s\t%s\n' "$(int "$BENCH_USERS")" "$(mb "$users_bytes")" "$(secs "$gen_wall")" "gen_dump $BENCH_USERS"
    printf 'mongodump, all %s collections\t-\t%s\t-\t%s\n' "$dump_files" "$(mb "$dump_bytes")" "users.bson is $(awk -v a="$users_bytes" -v b="$dump_bytes" 'BEGIN { printf "%.0f", 100 * a / b }')% of the bytes"
    printf '%s\t%s\t%s\t%s\t%s\n' "$LVA" "$(int "$n_lva")" "$(mb "$lva_bytes")" "$(secs "$gen_matomo_wall")" "InnoDB data+indexes (estimate); server_time $lva_span; time_spent ${lva_nulls}% NULL"
    printf 'matomo_log_visit\t%s\t%s\t(same)\t%s\n' "$(int "$n_visit")" "$(mb "$visit_bytes")" "10 actions per visit"
    printf 'matomo_log_action\t%s\t%s\t(same)\t%s\n' "$(int "$n_action")" "$(mb "$action_bytes")" "URLs/titles 30-60 chars"
} | table
note "Matomo rows: MariaDB $MY_DB = tests/fixtures/matomo/schema.sql (columns checked against"
note "config/matomo_schemas.yaml) + INSERT ... SELECT FROM seq_1_to_N (pure SQL)."

# ================================================================== 2. Extract
section "2. Extract"

# Floor: reading the dump bytes (page cache: the dump was just written, as it is for etl).
run_timed cat_users bash -c 'cat "$0" >/dev/null' "$dump/users.bson"
floor_users_wall=$WALL
run_timed cat_dump bash -c 'cat "$0"/*.bson >/dev/null' "$dump"
floor_dump_wall=$WALL
# Floor: the bson crate alone reading users.bson (every element walked, nothing converted).
run_timed bson_floor "$work/bin/bson_floor" "$dump/users.bson"
floor_bson_wall=$WALL

# etl extract of the whole dump.
run_timed extract_dump env "$etl" --config "$work/config" --staging "$work/staging" \
    extract --source dump --dump "$dump" --full
ext_wall=$WALL ext_rss=$RSS_KB
keep_manifest extract_dump "$work/staging" extract
ext_docs=$(mf extract_dump '*' rows)
ext_users=$(mf extract_dump users rows)
((ext_users == BENCH_USERS)) || die "extract staged $ext_users users, expected $BENCH_USERS"
staged_bytes=$(dir_bytes "$work/staging")

# Matomo: etl extract of log_link_visit_action, and the floor SELECT ... INTO OUTFILE.
run_timed extract_matomo env MATOMO_DATABASE=$MY_DB "$etl" --config "$work/config" \
    --staging "$work/staging-matomo" extract --source matomo --full --tables $LVA
mext_wall=$WALL mext_rss=$RSS_KB
keep_manifest extract_matomo "$work/staging-matomo" extract
mext_rows=$(mf extract_matomo $LVA rows)
((mext_rows == N)) || die "etl extracted $mext_rows rows of $LVA, expected $N"

# The OUTFILE select list: every column in table order, binary ones as PostgreSQL bytea hex.
lva_cols=$(my "$MY_DB" -e "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$LVA' ORDER BY ORDINAL_POSITION" | paste -sd, -)
select_list=$(my "$MY_DB" -e "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '$LVA' ORDER BY ORDINAL_POSITION" |
    awk -F'\t' '{ if ($2 ~ /binary|blob/) printf "%sCONCAT(\047\\\\x\047, HEX(`%s`))", sep, $1; else printf "%s`%s`", sep, $1; sep = ", " }')
[[ -n $lva_cols && -n $select_list ]] || die "cannot read the columns of $LVA"
rm -f "$OUTFILE"
printf "SELECT %s FROM %s INTO OUTFILE '%s';\n" "$select_list" "$LVA" "$OUTFILE" >"$work/outfile.sql"
run_timed outfile bash -c 'mariadb --no-defaults -h "$0" -P "$1" -u "$2" --batch "$3" <"$4"' \
    "$MATOMO_HOST" "$MATOMO_PORT" "$MATOMO_USER" "$MY_DB" "$work/outfile.sql"
outfile_wall=$WALL
[[ -r $OUTFILE ]] || die "MariaDB wrote no readable $OUTFILE"
outfile_lines=$(wc -l <"$OUTFILE")
((outfile_lines == N)) || die "$OUTFILE has $outfile_lines lines, expected $N"
outfile_bytes=$(stat -c %s "$OUTFILE")
mstaged_bytes=$(dir_bytes "$work/staging-matomo")

{
    printf 'what\trows\tMB in\tseconds\trows/s\tMB/s\tpeak RSS MiB\tfloor rows/s\tetl / floor\n'
    printf 'floor: cat users.bson >/dev/null\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$(int "$BENCH_USERS")" "$(mb "$users_bytes")" "$(secs "$floor_users_wall")" "$(rate "$BENCH_USERS" "$floor_users_wall")" "$(mbps "$users_bytes" "$floor_users_wall")"
    printf 'floor: cat all *.bson >/dev/null\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$(int "$ext_docs")" "$(mb "$dump_bytes")" "$(secs "$floor_dump_wall")" "$(rate "$ext_docs" "$floor_dump_wall")" "$(mbps "$dump_bytes" "$floor_dump_wall")"
    printf 'floor: bson crate alone, users.bson\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$(int "$BENCH_USERS")" "$(mb "$users_bytes")" "$(secs "$floor_bson_wall")" "$(rate "$BENCH_USERS" "$floor_bson_wall")" "$(mbps "$users_bytes" "$floor_bson_wall")"
    printf 'etl extract --source dump (all)\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(int "$ext_docs")" "$(mb "$dump_bytes")" "$(secs "$ext_wall")" "$(rate "$ext_docs" "$ext_wall")" "$(mbps "$dump_bytes" "$ext_wall")" "$(mib "$ext_rss")" "$(rate "$BENCH_USERS" "$floor_bson_wall")" "$(ratio "$(rate_raw "$ext_docs" "$ext_wall")" "$(rate_raw "$BENCH_USERS" "$floor_bson_wall")")"
    printf 'floor: SELECT ... INTO OUTFILE\t%s\t-\t%s\t%s\t%s\t-\t-\t-\n' "$(int "$N")" "$(secs "$outfile_wall")" "$(rate "$N" "$outfile_wall")" "$(mbps "$outfile_bytes" "$outfile_wall") out"
    printf 'etl extract --source matomo (%s)\t%s\t-\t%s\t%s\t-\t%s\t%s\t%s\n' "$LVA" "$(int "$mext_rows")" "$(secs "$mext_wall")" "$(rate "$mext_rows" "$mext_wall")" "$(mib "$mext_rss")" "$(rate "$N" "$outfile_wall")" "$(ratio "$(rate_raw "$mext_rows" "$mext_wall")" "$(rate_raw "$N" "$outfile_wall")")"
} | table
note "Dump floors: cat of the .bson files (page cache: raw read throughput), and"
note "examples/bson_floor.rs: the bson crate alone walking every element of users.bson (the"
note "parse floor; single-threaded). etl / floor compares with the bson-crate floor."
note "etl's dump rows/s counts all staged documents of all $dump_files collections (per users.bson alone:"
note "$(rate "$ext_users" "$ext_wall") users/s over the whole command). Staged Parquet: $(mb "$staged_bytes") MB."
note "OUTFILE floor: tab-separated, idvisitor as \\x hex (for PostgreSQL), $(mb "$outfile_bytes") MB written"
note "(its MB/s is of that output); etl's Matomo Parquet: $(mb "$mstaged_bytes") MB."

# ================================================================ 3. Transform
section "3. Transform"

# 1 and 2 threads, alternating, BENCH_TRANSFORM_REPEAT times each: the median wall time is
# reported (a 2-core machine shared with other work is noisy), peak RSS is the highest seen.
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
max_of() { tr ' ' '\n' | sort -g | tail -n 1; }
declare -A tr_walls tr_rss tr_cpu
for ((i = 1; i <= BENCH_TRANSFORM_REPEAT; i++)); do
    for t in 1 2; do
        run_timed "transform_${t}t_$i" env RAYON_NUM_THREADS=$t "$etl" --config "$work/config" --staging "$work/staging" transform
        keep_manifest "transform_${t}t_$i" "$work/staging" transform
        tr_walls[$t]+="$WALL " tr_rss[$t]+="$RSS_KB " tr_cpu[$t]+="$CPU_PCT "
    done
done
for t in 1 2; do
    [[ $(wc -w <<<"${tr_walls[$t]}") == "$BENCH_TRANSFORM_REPEAT" ]] || die "transform ${t}T: missing timings"
done
tr1_wall=$(median <<<"${tr_walls[1]% }") tr1_rss=$(max_of <<<"${tr_rss[1]% }")
tr2_wall=$(median <<<"${tr_walls[2]% }") tr2_rss=$(max_of <<<"${tr_rss[2]% }")
tr_range() { tr ' ' '\n' <<<"${tr_walls[$1]% }" | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f-%.2f", v[1], v[NR] }'; }
tr_read=$(mf transform_2t_1 '*' counts.extracted)
tr_rows=$(mf transform_2t_1 '*' counts.transformed)
tr_rejected=$(mf transform_2t_1 '*' counts.rejected)
tr_rows_1t=$(mf transform_1t_1 '*' counts.transformed)
((tr_rows == tr_rows_1t)) || die "transform wrote $tr_rows_1t rows with 1 thread and $tr_rows with 2"

{
    printf 'run\tdocs in\trows out\tseconds (median)\trange s\tdocs/s\trows out/s\tpeak RSS MiB\tCPU per run\n'
    printf 'RAYON_NUM_THREADS=1\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(int "$ext_docs")" "$(int "$tr_rows")" "$(secs "$tr1_wall")" "$(tr_range 1)" "$(rate "$ext_docs" "$tr1_wall")" "$(rate "$tr_rows" "$tr1_wall")" "$(mib "$tr1_rss")" "${tr_cpu[1]% }"
    printf 'RAYON_NUM_THREADS=2\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(int "$ext_docs")" "$(int "$tr_rows")" "$(secs "$tr2_wall")" "$(tr_range 2)" "$(rate "$ext_docs" "$tr2_wall")" "$(rate "$tr_rows" "$tr2_wall")" "$(mib "$tr2_rss")" "${tr_cpu[2]% }"
    printf 'speedup 2T / 1T\t-\t-\t-\t-\t%s\t-\t-\t-\n' "$(ratio "$tr1_wall" "$tr2_wall")"
} | table
note "docs in = documents the extract staged ($(int "$ext_docs")); the transform read $(int "$tr_read") source rows"
note "(one collection feeds several tables) and rejected $(int "$tr_rejected"). $BENCH_TRANSFORM_REPEAT run(s) per variant, alternating."
out ""
out "   slowest tables (RAYON_NUM_THREADS=2, per etl's transform manifest):"
mf_top transform_2t_1 6 seconds | while IFS=$'\t' read -r t sec; do
    printf '%s\t%s\t%s\t%s\n' "$t" "$(int "$(mf transform_2t_1 "$t" counts.extracted)")" "$(int "$(mf transform_2t_1 "$t" counts.transformed)")" "$(secs "$sec")"
done | { printf 'table\tread\twritten\tseconds\n'; cat; } | table

# RSS scaling: the same pipeline on a dump with RSS_FACTOR x the users.
if [[ $BENCH_RSS_SCALE == 1 ]]; then
    users5=$((BENCH_USERS * RSS_FACTOR))
    run_timed gen_dump_5x "$gen_dump" "$work/dump5" "$users5"
    run_timed extract_dump_5x "$etl" --config "$work/config" --staging "$work/staging5" \
        extract --source dump --dump "$work/dump5/smartdiet" --full
    ext5_wall=$WALL ext5_rss=$RSS_KB
    keep_manifest extract_dump_5x "$work/staging5" extract
    ext5_users=$(mf extract_dump_5x users rows)
    ext5_docs=$(mf extract_dump_5x '*' rows)
    ((ext5_users == users5)) || die "5x extract staged $ext5_users users, expected $users5"
    run_timed transform_5x env RAYON_NUM_THREADS=2 "$etl" --config "$work/config" --staging "$work/staging5" transform
    tr5_wall=$WALL tr5_rss=$RSS_KB
    rm -rf "$work/dump5" "$work/staging5"
    out ""
    out "   peak RSS scaling (${RSS_FACTOR}x users):"
    {
        printf 'stage\tRSS 1x MiB\tRSS %sx MiB\tratio\tseconds 1x\tseconds %sx\tdocs/s 1x\tdocs/s %sx\n' "$RSS_FACTOR" "$RSS_FACTOR" "$RSS_FACTOR"
        printf 'extract (dump)\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(mib "$ext_rss")" "$(mib "$ext5_rss")" "$(ratio "$ext5_rss" "$ext_rss")" "$(secs "$ext_wall")" "$(secs "$ext5_wall")" "$(rate "$ext_docs" "$ext_wall")" "$(rate "$ext5_docs" "$ext5_wall")"
        printf 'transform (2 threads)\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(mib "$tr2_rss")" "$(mib "$tr5_rss")" "$(ratio "$tr5_rss" "$tr2_rss")" "$(secs "$tr2_wall")" "$(secs "$tr5_wall")" "$(rate "$ext_docs" "$tr2_wall")" "$(rate "$ext5_docs" "$tr5_wall")"
    } | table
    note "1x = $(int "$BENCH_USERS") users, ${RSS_FACTOR}x = $(int "$users5"); a ratio near 1 means memory is bounded, near $RSS_FACTOR that it grows with the data."
else
    note "RSS scaling skipped (BENCH_RSS_SCALE=0)."
fi

# ===================================================================== 4. Load
section "4. Load"

# The Matomo run: transform it, then load into an empty database, twice more into the full one.
run_timed transform_matomo "$etl" --config "$work/config" --staging "$work/staging-matomo" transform --tables $LVA
mtr_wall=$WALL mtr_rss=$RSS_KB
keep_manifest transform_matomo "$work/staging-matomo" transform
mtr_rows=$(mf transform_matomo $LVA counts.transformed)
((mtr_rows == N)) || die "transform wrote $mtr_rows rows of $LVA, expected $N"

fresh_pg_db $DB_EMPTY
url_empty=$PG_BASE/$DB_EMPTY
etl_load_lva() { # NAME: etl load of the Matomo run into $DB_EMPTY; sets L_WALL L_RSS L_SECS L_INS L_UPD
    run_timed "$1" env DATABASE_URL="$url_empty" "$etl" --config "$work/config" \
        --staging "$work/staging-matomo" load --tables $LVA
    L_WALL=$WALL L_RSS=$RSS_KB
    keep_manifest "$1" "$work/staging-matomo" load
    L_SECS=$(mf "$1" $LVA seconds)
    L_INS=$(mf "$1" $LVA counts.inserted)
    L_UPD=$(mf "$1" $LVA counts.updated)
}
etl_load_lva load_lva_empty
le_wall=$L_WALL le_rss=$L_RSS le_secs=$L_SECS le_ins=$L_INS le_upd=$L_UPD
((le_ins == N)) || die "first load inserted $le_ins rows, expected $N"
((le_upd == 0)) || die "first load (empty database) updated $le_upd rows, expected 0"
[[ $(pg_value "$url_empty" "SELECT count(*) FROM $LVA") == "$N" ]] || die "$DB_EMPTY.$LVA does not hold $N rows"
pg "$url_empty" -c "VACUUM ANALYZE $LVA"

etl_load_lva load_lva_same
ls_wall=$L_WALL ls_rss=$L_RSS ls_secs=$L_SECS ls_ins=$L_INS ls_upd=$L_UPD
((ls_ins == 0)) || die "reload of identical rows inserted $ls_ins rows, expected 0"

progress "$DB_EMPTY: UPDATE $LVA SET time_spent = coalesce(time_spent, 0) + 1; VACUUM"
pg "$url_empty" -c "UPDATE $LVA SET time_spent = coalesce(time_spent, 0) + 1" -c "VACUUM ANALYZE $LVA" >/dev/null
etl_load_lva load_lva_changed
lc_wall=$L_WALL lc_rss=$L_RSS lc_secs=$L_SECS lc_ins=$L_INS lc_upd=$L_UPD
((lc_upd == N)) || die "reload after the UPDATE updated $lc_upd rows, expected $N"

# Floors, in their own database: the target DDL from `etl schema`, the MariaDB OUTFILE rows.
fresh_pg_db $DB_FULL
url_full=$PG_BASE/$DB_FULL
"$etl" --config "$work/config" schema >"$work/schema.sql" 2>"$logs/schema.err" || {
    cat "$logs/schema.err" >&2
    die "etl schema failed"
}
pg "$url_full" -f "$work/schema.sql" >/dev/null
pg_cols=$(pg_value "$url_full" "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '$LVA'")
[[ $pg_cols == "$lva_cols" ]] || die "columns of $LVA differ between MariaDB and etl schema:
MariaDB: $lva_cols
etl schema: $pg_cols"
pg "$url_full" -c "CREATE TABLE lva_floor (LIKE $LVA INCLUDING ALL)"

# (a) \copy into an empty table of the same types and keys.
run_timed floor_copy psql -X -q -v ON_ERROR_STOP=1 "$url_full" -c "\\copy lva_floor ($lva_cols) FROM '$OUTFILE'"
fc_wall=$WALL
[[ $(pg_value "$url_full" "SELECT count(*) FROM lva_floor") == "$N" ]] || die "lva_floor does not hold $N rows after \\copy"

# The floor copy must hold what etl loaded (spot check of a few aggregates).
check_sql="SELECT count(*), sum(idlink_va), sum(length(idvisitor)), count(custom_float), sum(time_spent_ref_action), min(server_time)::text, max(server_time)::text, sum(length(custom_dimension_2)), count(idaction_name) FROM"
etl_agg=$(pg_value "$url_empty" "$check_sql $LVA")
floor_agg=$(pg_value "$url_full" "$check_sql lva_floor")
[[ $etl_agg == "$floor_agg" ]] || note "WARNING: aggregates of etl's load and the floor copy differ: etl $etl_agg / floor $floor_agg"

# (b) the hand-written upsert into the full table: COPY into a temp table, INSERT ... ON CONFLICT.
pg "$url_full" -c "INSERT INTO $LVA SELECT * FROM lva_floor" -c "VACUUM ANALYZE $LVA" >/dev/null
set_list=$(tr ',' '\n' <<<"$lva_cols" | awk '$1 != "idlink_va" { printf "%s%s = EXCLUDED.%s", sep, $1, $1; sep = ", " }')
tcols=$(tr ',' '\n' <<<"$lva_cols" | awk '$1 != "idlink_va" { printf "%st.%s", sep, $1; sep = ", " }')
excl=$(tr ',' '\n' <<<"$lva_cols" | awk '$1 != "idlink_va" { printf "%sEXCLUDED.%s", sep, $1; sep = ", " }')
upsert_script() { # WHERE-clause (or empty)
    cat <<EOF
CREATE TEMP TABLE lva_stage (LIKE $LVA) ON COMMIT DROP;
\\copy lva_stage ($lva_cols) FROM '$OUTFILE'
INSERT INTO $LVA AS t SELECT * FROM lva_stage ON CONFLICT (idlink_va) DO UPDATE SET $set_list $1;
EOF
}
upsert_script "" >"$work/upsert.sql"
upsert_script "WHERE ($tcols) IS DISTINCT FROM ($excl)" >"$work/upsert_distinct.sql"
run_timed floor_upsert psql -X -q -1 -v ON_ERROR_STOP=1 "$url_full" -f "$work/upsert.sql"
fu_wall=$WALL
pg "$url_full" -c "VACUUM ANALYZE $LVA" >/dev/null
run_timed floor_upsert_distinct psql -X -q -1 -v ON_ERROR_STOP=1 "$url_full" -f "$work/upsert_distinct.sql"
fud_wall=$WALL

{
    printf 'what\trows\tseconds\trows/s\tetl table s\tpeak RSS MiB\tinserted\tupdated\tfloor\tetl / floor\n'
    printf 'floor (a): psql \\copy into empty lva_floor\t%s\t%s\t%s\t-\t-\t%s\t-\t-\t-\n' "$(int "$N")" "$(secs "$fc_wall")" "$(rate "$N" "$fc_wall")" "$(int "$N")"
    printf 'etl load, empty database\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t(a)\t%s\n' "$(int "$N")" "$(secs "$le_wall")" "$(rate "$N" "$le_wall")" "$(secs "$le_secs")" "$(mib "$le_rss")" "$(int "$le_ins")" "$(int "$le_upd")" "$(ratio "$(rate_raw "$N" "$le_wall")" "$(rate_raw "$N" "$fc_wall")")"
    printf 'floor (b): COPY temp + ON CONFLICT DO UPDATE (all rows)\t%s\t%s\t%s\t-\t-\t-\t%s\t-\t-\n' "$(int "$N")" "$(secs "$fu_wall")" "$(rate "$N" "$fu_wall")" "$(int "$N")"
    printf 'floor (c): same, WHERE ... IS DISTINCT FROM (no-op)\t%s\t%s\t%s\t-\t-\t-\t0\t-\t-\n' "$(int "$N")" "$(secs "$fud_wall")" "$(rate "$N" "$fud_wall")"
    printf 'etl load, full db, identical rows\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t(b)\t%s\n' "$(int "$N")" "$(secs "$ls_wall")" "$(rate "$N" "$ls_wall")" "$(secs "$ls_secs")" "$(mib "$ls_rss")" "$(int "$ls_ins")" "$(int "$ls_upd")" "$(ratio "$(rate_raw "$N" "$ls_wall")" "$(rate_raw "$N" "$fu_wall")")"
    printf '  (same, against floor c)\t-\t-\t-\t-\t-\t-\t-\t(c)\t%s\n' "$(ratio "$(rate_raw "$N" "$ls_wall")" "$(rate_raw "$N" "$fud_wall")")"
    printf 'etl load, full db, every row differs\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t(b)\t%s\n' "$(int "$N")" "$(secs "$lc_wall")" "$(rate "$N" "$lc_wall")" "$(secs "$lc_secs")" "$(mib "$lc_rss")" "$(int "$lc_ins")" "$(int "$lc_upd")" "$(ratio "$(rate_raw "$N" "$lc_wall")" "$(rate_raw "$N" "$fu_wall")")"
} | table
note "Matomo: $LVA, $(int "$N") rows. etl loads go to $DB_EMPTY (created fresh); floors to $DB_FULL, whose"
note "tables come from \`etl schema\`; lva_floor = (LIKE $LVA INCLUDING ALL). Floors read the MariaDB"
note "OUTFILE (COPY text format). 'every row differs': UPDATE ... SET time_spent = coalesce(time_spent,0)+1"
note "then VACUUM ANALYZE (untimed) before the reload. 'etl / floor' compares rows/s (higher is better)."
note "seconds = the whole etl command; 'etl table s' = the seconds etl's own summary gives the table."
note "etl transform of this run (not in these figures): $(secs "$mtr_wall") s, $(rate "$N" "$mtr_wall") rows/s, peak RSS $(mib "$mtr_rss") MiB."

# SmartDiet: the 1x run (sections 2-3) into an empty database, then again into the full one.
fresh_pg_db $DB_USERS
url_users=$PG_BASE/$DB_USERS
run_timed load_users_empty env DATABASE_URL="$url_users" "$etl" --config "$work/config" --staging "$work/staging" load
ue_wall=$WALL ue_rss=$RSS_KB
keep_manifest load_users_empty "$work/staging" load
pg "$url_users" -c "VACUUM ANALYZE" >/dev/null
run_timed load_users_full env DATABASE_URL="$url_users" "$etl" --config "$work/config" --staging "$work/staging" load
uf_wall=$WALL uf_rss=$RSS_KB
keep_manifest load_users_full "$work/staging" load
ue_rows=$(mf load_users_empty '*' rows)
ue_ins=$(mf load_users_empty '*' counts.inserted)
uf_ins=$(mf load_users_full '*' counts.inserted)
uf_upd=$(mf load_users_full '*' counts.updated)
uf_del=$(mf load_users_full '*' counts.deleted)
((ue_rows == tr_rows)) || note "WARNING: the load read $ue_rows rows, the transform wrote $tr_rows"
[[ $(pg_value "$url_users" "SELECT count(*) FROM users") == "$BENCH_USERS" ]] || die "$DB_USERS.users does not hold $BENCH_USERS rows"

out ""
out "   SmartDiet run ($(int "$BENCH_USERS") users) into $DB_USERS: empty, then full (identical rows):"
{
    printf 'table\trows\tempty s\tempty rows/s\tfull s\tfull rows/s\tfull ins/upd/del\n'
    mf_top load_users_empty 8 rows | while IFS=$'\t' read -r t rows; do
        es=$(mf load_users_empty "$t" seconds)
        fs=$(mf load_users_full "$t" seconds)
        fi_=$(mf load_users_full "$t" counts.inserted)
        fu_=$(mf load_users_full "$t" counts.updated)
        fd_=$(mf load_users_full "$t" counts.deleted)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$(int "$rows")" "$(secs "$es")" "$(rate "$rows" "$es")" "$(secs "$fs")" "$(rate "$rows" "$fs")" "$fi_/$fu_/$fd_"
    done
    printf 'all tables (whole command)\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(int "$ue_rows")" "$(secs "$ue_wall")" "$(rate "$ue_rows" "$ue_wall")" "$(secs "$uf_wall")" "$(rate "$ue_rows" "$uf_wall")" "$uf_ins/$uf_upd/$uf_del"
} | table
note "The 8 largest of $(mf_count load_users_empty) tables; per-table seconds from etl's load manifest. Peak RSS: empty $(mib "$ue_rss") MiB, full $(mib "$uf_rss") MiB."
note "Empty load inserted $(int "$ue_ins") rows."

# Floors for the biggest link table, users_targets: the same rows with psql alone.
ut_cols="user_id, target_id, type, created_at, updated_at"
ut_file=$work/users_targets.tsv
pg "$url_users" -c "\\copy users_targets ($ut_cols) TO '$ut_file'"
ut_rows=$(wc -l <"$ut_file")
pg "$url_users" -c "CREATE TABLE ut_floor (LIKE users_targets INCLUDING ALL)"
run_timed floor_ut_copy psql -X -q -v ON_ERROR_STOP=1 "$url_users" -c "\\copy ut_floor ($ut_cols) FROM '$ut_file'"
ftc_wall=$WALL
pg "$url_users" -c "TRUNCATE ut_floor" -c "ALTER TABLE ut_floor ADD FOREIGN KEY (user_id) REFERENCES users(id), ADD FOREIGN KEY (target_id) REFERENCES targets(id)"
run_timed floor_ut_copy_fk psql -X -q -v ON_ERROR_STOP=1 "$url_users" -c "\\copy ut_floor ($ut_cols) FROM '$ut_file'"
ftf_wall=$WALL
pg "$url_users" -c "DROP TABLE ut_floor"
{
    echo "CREATE TEMP TABLE ut_stage (LIKE users_targets) ON COMMIT DROP;"
    echo "\\copy ut_stage ($ut_cols) FROM '$ut_file'"
    echo "INSERT INTO users_targets AS t ($ut_cols) SELECT $ut_cols FROM ut_stage"
    echo "  ON CONFLICT (user_id, target_id, type) DO UPDATE SET created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at;"
} >"$work/ut_upsert.sql"
run_timed floor_ut_upsert psql -X -q -1 -v ON_ERROR_STOP=1 "$url_users" -f "$work/ut_upsert.sql"
ftu_wall=$WALL
ut_empty=$(mf load_users_empty users_targets seconds)
ut_full=$(mf load_users_full users_targets seconds)
out ""
out "   users_targets ($(int "$ut_rows") rows) against psql alone on the same rows:"
{
    printf 'what\tseconds\trows/s\tetl / floor\n'
    printf 'floor (a): \\copy into an empty copy of the table (keys, no FKs)\t%s\t%s\t-\n' "$(secs "$ftc_wall")" "$(rate "$ut_rows" "$ftc_wall")"
    printf "floor (a2): same with its two foreign keys\t%s\t%s\t-\n" "$(secs "$ftf_wall")" "$(rate "$ut_rows" "$ftf_wall")"
    printf 'etl, empty target (orphan checks, FKs kept)\t%s\t%s\t%s vs (a), %s vs (a2)\n' "$(secs "$ut_empty")" "$(rate "$ut_rows" "$ut_empty")" "$(ratio "$(rate_raw "$ut_rows" "$ut_empty")" "$(rate_raw "$ut_rows" "$ftc_wall")")" "$(ratio "$(rate_raw "$ut_rows" "$ut_empty")" "$(rate_raw "$ut_rows" "$ftf_wall")")"
    printf 'floor (b): COPY temp + ON CONFLICT DO UPDATE into the full table\t%s\t%s\t-\n' "$(secs "$ftu_wall")" "$(rate "$ut_rows" "$ftu_wall")"
    printf 'etl, full target (identical rows, replace per parent)\t%s\t%s\t%s vs (b)\n' "$(secs "$ut_full")" "$(rate "$ut_rows" "$ut_full")" "$(ratio "$(rate_raw "$ut_rows" "$ut_full")" "$(rate_raw "$ut_rows" "$ftu_wall")")"
} | table
note "etl seconds are the table's line of etl's load summary (COPY, orphan checks, replace, upsert)."

# ========================================================== 5. End to end Matomo
section "5. End to end Matomo ($LVA, $(int "$N") rows, MariaDB -> PostgreSQL)"
e2e_wall=$(add "$(add "$mext_wall" "$mtr_wall")" "$le_wall")
raw_wall=$(add "$outfile_wall" "$fc_wall")
{
    printf 'path\textract s\ttransform s\tload s\ttotal s\trows/s\tvs floor\n'
    printf 'etl extract + transform + load (empty db)\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(secs "$mext_wall")" "$(secs "$mtr_wall")" "$(secs "$le_wall")" "$(secs "$e2e_wall")" "$(rate "$N" "$e2e_wall")" "$(ratio "$(rate_raw "$N" "$e2e_wall")" "$(rate_raw "$N" "$raw_wall")")"
    printf 'floor: OUTFILE + psql \\copy\t%s\t-\t%s\t%s\t%s\t1.00x\n' "$(secs "$outfile_wall")" "$(secs "$fc_wall")" "$(secs "$raw_wall")" "$(rate "$N" "$raw_wall")"
} | table
note "Stage shares of etl's total: extract $(awk -v a="$mext_wall" -v t="$e2e_wall" 'BEGIN { printf "%.0f", 100 * a / t }')%, transform $(awk -v a="$mtr_wall" -v t="$e2e_wall" 'BEGIN { printf "%.0f", 100 * a / t }')%, load $(awk -v a="$le_wall" -v t="$e2e_wall" 'BEGIN { printf "%.0f", 100 * a / t }')%."
note "Peak RSS: extract $(mib "$mext_rss") MiB, transform $(mib "$mtr_rss") MiB, load $(mib "$le_rss") MiB."

# ============================================= 6. History (etl rollback) and etl verify
section "6. The cost of keeping history for etl rollback, and etl verify"
# The same Matomo run into two fresh databases, without history (ETL_HISTORY_RUNS=0) and with
# it (the default), first into empty tables, then again after every row changed.
hist_loads() { # DB KEEP NAME: empty load, UPDATE every row, reload; sets H_EMPTY H_CHANGED
    fresh_pg_db "$1"
    run_timed "$3_empty" env DATABASE_URL="$PG_BASE/$1" ETL_HISTORY_RUNS="$2" "$etl" --config "$work/config" \
        --staging "$work/staging-matomo" load --tables $LVA
    H_EMPTY=$WALL
    pg "$PG_BASE/$1" -c "UPDATE $LVA SET time_spent = coalesce(time_spent, 0) + 1" -c "VACUUM ANALYZE $LVA" >/dev/null
    run_timed "$3_changed" env DATABASE_URL="$PG_BASE/$1" ETL_HISTORY_RUNS="$2" "$etl" --config "$work/config" \
        --staging "$work/staging-matomo" load --tables $LVA
    H_CHANGED=$WALL
    keep_manifest "$3_changed" "$work/staging-matomo" load
    (($(mf "$3_changed" $LVA counts.updated) == N)) || die "$3: the reload did not update every row"
}
hist_loads $DB_HIST0 0 hist0
h0_empty=$H_EMPTY h0_changed=$H_CHANGED
hist_loads $DB_HIST 3 hist3
h3_empty=$H_EMPTY h3_changed=$H_CHANGED
run_timed rollback_changed env DATABASE_URL="$PG_BASE/$DB_HIST" "$etl" --config "$work/config" rollback
rb_wall=$WALL
# SmartDiet: the 1x run into a third database without history, beside the empty load above.
fresh_pg_db $DB_USERS0
run_timed load_users_empty_nohist env DATABASE_URL="$PG_BASE/$DB_USERS0" ETL_HISTORY_RUNS=0 "$etl" --config "$work/config" --staging "$work/staging" load
u0_wall=$WALL
{
    printf 'load	without history s	with history s	with / without
'
    printf 'Matomo %s rows, empty tables	%s	%s	%s
' "$(int "$N")" "$(secs "$h0_empty")" "$(secs "$h3_empty")" "$(ratio "$h3_empty" "$h0_empty")"
    printf 'Matomo, every row changed	%s	%s	%s
' "$(secs "$h0_changed")" "$(secs "$h3_changed")" "$(ratio "$h3_changed" "$h0_changed")"
    printf 'SmartDiet %s users + links, empty tables	%s	%s	%s
' "$(int "$BENCH_USERS")" "$(secs "$u0_wall")" "$(secs "$ue_wall")" "$(ratio "$ue_wall" "$u0_wall")"
} | table
note "with / without = seconds with history over seconds without (goal for empty tables: <= 1.10)."
note "etl rollback of the 'every row changed' load (restores $(int "$N") previous versions): $(secs "$rb_wall") s."

# verify: the SmartDiet target against the dump it came from (read again in full).
run_timed verify_users env DATABASE_URL="$url_users" "$etl" --config "$work/config" --staging "$work/staging" \
    verify --source dump --dump "$dump" --json "$logs/verify_users.report.json"
vf_wall=$WALL vf_rss=$RSS_KB
vf_rows=$(python3 -c 'import json,sys; print(sum(t["expected"] for t in json.load(open(sys.argv[1]))["tables"]))' "$logs/verify_users.report.json")
{
    printf 'what	rows compared	seconds	rows/s	peak RSS MiB
'
    printf 'etl verify (extract + transform of the dump, compare in PostgreSQL)	%s	%s	%s	%s
' "$(int "$vf_rows")" "$(secs "$vf_wall")" "$(rate "$vf_rows" "$vf_wall")" "$(mib "$vf_rss")"
    printf 'etl extract + transform of the same dump (sections 2-3)	-	%s	-	-
' "$(secs "$(add "$ext_wall" "$tr2_wall")")"
} | table

# ================================================ 7. An incremental SmartDiet run
section "7. Incremental SmartDiet run: 1% of the users changed"
# The same dump with the first 1% of users edited (first target removed, events emptied,
# update_date moved forward), then one `etl run` on the target loaded in section 4: the
# window (the target's newest created/updated) keeps only what changed.
changed=$((BENCH_USERS / 100))
run_timed gen_dump_changed "$gen_dump" "$work/dump-changed" "$BENCH_USERS" "$changed"
run_timed run_incremental env DATABASE_URL="$url_users" "$etl" --config "$work/config" --staging "$work/staging-inc" \
    run --source dump --dump "$work/dump-changed/smartdiet"
inc_wall=$WALL inc_rss=$RSS_KB
keep_manifest run_incremental_extract "$work/staging-inc" extract
keep_manifest run_incremental_load "$work/staging-inc" load
inc_users=$(mf run_incremental_extract users rows)
inc_upd=$(mf run_incremental_load users counts.updated)
((inc_upd == changed)) || die "the incremental run updated $inc_upd users, expected $changed"
first_wall=$(add "$(add "$ext_wall" "$tr2_wall")" "$ue_wall")
{
    printf 'run\tusers staged\tusers updated\tseconds\tpeak RSS MiB\tvs first load\n'
    printf 'first load: extract + transform (2 threads) + load into empty tables\t%s\t%s\t%s\t-\t1.00x\n' "$(int "$BENCH_USERS")" "0" "$(secs "$first_wall")"
    printf 'etl run, 1%% changed (whole dump read, window from the target)\t%s\t%s\t%s\t%s\t%s\n' "$(int "$inc_users")" "$(int "$inc_upd")" "$(secs "$inc_wall")" "$(mib "$inc_rss")" "$(awk -v a="$inc_wall" -v b="$first_wall" 'BEGIN { printf "%.1f%%", 100 * a / b }')"
} | table
note "'vs first load' = the incremental run's seconds as a share of the first load's (goal: at most 10%)."
note "Link rows of the changed users: $(mf run_incremental_load '*' counts.deleted) deleted, $(mf run_incremental_load '*' counts.inserted) inserted (all tables)."

# ====================================================== 8. PostgreSQL to PostgreSQL
section "8. PostgreSQL to PostgreSQL ($(int "$N") rows, 10 columns)"
# A 10-column source table generated in SQL, moved by `etl run --source postgres` into an
# empty target, beside the floor: `COPY (SELECT ...) TO STDOUT | COPY ... FROM STDIN` into the
# same table (`etl schema` DDL) in another database.
fresh_pg_db $DB_PGSRC
fresh_pg_db $DB_PGDST
fresh_pg_db $DB_PGFLOOR
url_pgsrc=$PG_BASE/$DB_PGSRC
progress "$DB_PGSRC: items ($(int "$N") rows, 10 columns)"
pg "$url_pgsrc" -c "CREATE TABLE items (id bigint PRIMARY KEY, n integer, big bigint, price numeric(12,2),
    name text, note text, active boolean, created timestamp, day date, meta jsonb)" \
    -c "INSERT INTO items SELECT i, i % 1000, i::bigint * 7919, (i % 100000) / 100.0, 'item ' || i,
    CASE WHEN i % 10 = 0 THEN NULL ELSE repeat(md5(i::text), 1 + i % 3) END, i % 2 = 0,
    timestamp '2024-01-01' + i * interval '1 second', date '2024-01-01' + (i % 365),
    jsonb_build_object('k', i % 17, 'tags', jsonb_build_array('a', i % 5))
    FROM generate_series(1, $N) i" -c "VACUUM ANALYZE items" >/dev/null
mkdir -p "$work/config-pg"
cat >"$work/config-pg/postgres_schemas.yaml" <<'YAML'
items:
  postgres_table: items
  primary_key: [id]
  columns:
    - { name: id, sql_type: BIGINT, nullable: false }
    - { name: n, sql_type: INTEGER }
    - { name: big, sql_type: BIGINT }
    - { name: price, sql_type: "NUMERIC(12,2)" }
    - { name: name, sql_type: TEXT }
    - { name: note, sql_type: TEXT }
    - { name: active, sql_type: BOOLEAN }
    - { name: created, sql_type: TIMESTAMP }
    - { name: day, sql_type: DATE }
    - { name: meta, sql_type: JSONB }
YAML
run_timed pg_to_pg env SOURCE_DATABASE_URL="$url_pgsrc" DATABASE_URL="$PG_BASE/$DB_PGDST" "$etl" \
    --config "$work/config-pg" --staging "$work/staging-pg" run --source postgres
pgpg_wall=$WALL pgpg_rss=$RSS_KB
keep_manifest pg_to_pg_extract "$work/staging-pg" extract
keep_manifest pg_to_pg_load "$work/staging-pg" load
pgpg_ext=$(mf pg_to_pg_extract items seconds)
pgpg_load=$(mf pg_to_pg_load items seconds)
[[ $(pg_value "$PG_BASE/$DB_PGDST" "SELECT count(*) FROM items") == "$N" ]] || die "$DB_PGDST.items does not hold $N rows"
"$etl" --config "$work/config-pg" schema >"$work/schema-pg.sql" 2>"$logs/schema-pg.err" || die "etl schema (postgres config) failed"
pg "$PG_BASE/$DB_PGFLOOR" -f "$work/schema-pg.sql" >/dev/null
pg_cols="id, n, big, price, name, note, active, created, day, meta"
run_timed pg_to_pg_floor bash -c 'psql -X -q -v ON_ERROR_STOP=1 "$1" -c "COPY (SELECT $3 FROM items) TO STDOUT" |
    psql -X -q -v ON_ERROR_STOP=1 "$2" -c "COPY items ($3) FROM STDIN"' _ "$url_pgsrc" "$PG_BASE/$DB_PGFLOOR" "$pg_cols"
pgfl_wall=$WALL
check_pg="SELECT count(*), sum(id), sum(n), sum(price), sum(length(note)), count(*) FILTER (WHERE active), min(created)::text, max(day)::text, sum(length(meta::text)) FROM items"
[[ $(pg_value "$PG_BASE/$DB_PGDST" "$check_pg") == "$(pg_value "$PG_BASE/$DB_PGFLOOR" "$check_pg")" ]] ||
    note "WARNING: aggregates of etl's items and the floor's differ"
{
    printf 'path\tseconds\trows/s\tpeak RSS MiB\tvs floor\n'
    printf 'etl run --source postgres (extract %s s + transform + load %s s)\t%s\t%s\t%s\t%s\n' "$(secs "$pgpg_ext")" "$(secs "$pgpg_load")" "$(secs "$pgpg_wall")" "$(rate "$N" "$pgpg_wall")" "$(mib "$pgpg_rss")" "$(ratio "$(rate_raw "$N" "$pgpg_wall")" "$(rate_raw "$N" "$pgfl_wall")")"
    printf 'floor: psql COPY TO STDOUT | psql COPY FROM STDIN\t%s\t%s\t-\t1.00x\n' "$(secs "$pgfl_wall")" "$(rate "$N" "$pgfl_wall")"
} | table
note "vs floor compares rows/s (goal >= 0.80x). pgloader is not installed on this machine: no pgloader row."

out ""
"$repo/scripts/bench_matomo_api.sh" "$work/bin/etl" | tee -a "$report.partial" # Matomo HTTP API source (issue 12)
out "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (above ~0.5 before the bench = other work competed for the 2 cores)"
mv "$report.partial" "$report"
progress "report saved to $report (command logs in $logs)"
