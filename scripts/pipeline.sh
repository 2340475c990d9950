#!/usr/bin/env bash
# The full attested pipeline on the embedded defaults: keys, a key broker, encrypted
# NYC taxi data, the examples' pandas-on-Spark data-prep job under --tee sim, encrypted
# results decrypted for the data owner. Each step reports in one line. Run by
# `make demo` after the Spark examples (scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077

work=$(mktemp -d "${TMPDIR:-/tmp}/trustedml-pipeline.XXXXXX")
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
    kill -TERM "$broker_pid"; wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The repository's copy (datasets/README.md); TRUSTEDML_DEMO_DATA names another.
data=${TRUSTEDML_DEMO_DATA:-datasets/nyc_taxi.csv}
if [ ! -f "$data" ]; then
  echo "pipeline: NYC taxi dataset not found at $data (set TRUSTEDML_DEMO_DATA to a CSV with header timestamp,value)" >&2
  exit 1
fi

start=$(date +%s)
step() { printf '\033[1m[%3ss] %s\033[0m\n' "$(( $(date +%s) - start ))" "$*"; }
quiet() { "$@" > "$work/last.log" 2>&1 || { cat "$work/last.log" >&2; return 1; }; }

python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$work/passphrase"
export TRUSTEDML_PASSPHRASE_FILE="$work/passphrase"
export TRUSTEDML_KEYS="$work/keys"
export TRUSTEDML_SIM_KEY="$work/sim-key.pem"
ca="$TRUSTEDML_KEYS/tls/ca.pem"

quiet trustedml keys init "$TRUSTEDML_KEYS"
step "keys init: TLS CA and server certificate, Spark auth secret, enclave key, sealed in $TRUSTEDML_KEYS"

quiet trustedml attest sim-key --public-out "$work/sim-pub.pem"
step "sim signing key created; the broker will trust its public key (development only: no hardware)"

trustedml broker serve --db "$work/broker.db" --port 0 --port-file "$work/port" \
  --trust-sim-key "$work/sim-pub.pem" > "$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
  [ -s "$work/port" ] && break
  kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
  sleep 0.1
done
[ -s "$work/port" ] || { echo "pipeline: broker did not start" >&2; exit 1; }
url="https://127.0.0.1:$(cat "$work/port")"
step "key broker listening on $url (TLS 1.3, SQLite WAL store, pid $broker_pid)"

quiet trustedml broker admin-token --out "$work/admin-token"
export TRUSTEDML_ADMIN_TOKEN_FILE="$work/admin-token"

app=examples/nyc_taxi_prep.py
app_args=(--file-path "$work/nyc_taxi.csv.tml" --output "$work/busy-taxi" --key-id nyc)
job=$(trustedml measure --tee sim "$app" "${app_args[@]}")
step "job measurement of $app: ${job:0:24}…"

# The data owner's own tool identifies itself with a fixed sim measurement.
owner=$(printf 'trustedml demo data owner' | sha384sum | cut -c1-96)
cat > "$work/policy.toml" <<TOML
allow_simulated = true   # development only: sim evidence has no hardware protection
[[allow]]
type = "sim"
measurement = "$job"
[[allow]]
type = "sim"
measurement = "$owner"
TOML
quiet trustedml broker key create nyc --policy "$work/policy.toml" --url "$url" --ca "$ca"
step "KEK nyc created in the broker; releases only to the job above and the data owner"

owner_opts=(--broker "$url" --ca "$ca" --evidence-provider sim --sim-measurement "$owner")
quiet trustedml encrypt "$data" "$work/nyc_taxi.csv.tml" --key-id nyc "${owner_opts[@]}"
step "encrypted $data -> nyc_taxi.csv.tml ($(stat -c %s "$work/nyc_taxi.csv.tml") bytes) with a data key from the broker"

trustedml submit --tee sim --broker "$url" "$app" "${app_args[@]}" \
  > "$work/job.out" 2> "$work/job.err" || { cat "$work/job.out" "$work/job.err" >&2; exit 1; }
grep -q "output written encrypted" "$work/job.out" || { cat "$work/job.out" "$work/job.err" >&2; exit 1; }
step "job ran under --tee sim, attested to the broker, read encrypted input, wrote encrypted output: $(grep -m1 '^data2 collected' "$work/job.out")"

quiet trustedml decrypt "$work/busy-taxi" "$work/busy-taxi-plain" "${owner_opts[@]}"
rows=$(cat "$work"/busy-taxi-plain/*.csv* | grep -vc '^timestamp' || true)
step "decrypted the results for the data owner: $rows rows; first lines:"
first=$(find "$work/busy-taxi-plain" -type f -name '*.csv*' | sort | head -n 1)
head -n 4 "$first"

kill -TERM "$broker_pid"; wait "$broker_pid" 2>/dev/null || true
broker_pid=""
trustedml broker audit verify --db "$work/broker.db" > "$work/audit.txt" 2>&1 || { cat "$work/audit.txt" >&2; exit 1; }
step "broker stopped; audit log verified: $(tail -n 1 "$work/audit.txt")"
