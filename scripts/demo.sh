#!/usr/bin/env bash
# End-to-end demo on the embedded defaults: a fresh key directory, then the Spark
# ones among the BigDL PPML reference examples through `trustedml submit` in secure
# mode. Run by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077

work=$(mktemp -d "${TMPDIR:-/tmp}/trustedml-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A random passphrase in a private file: secrets never go on a command line.
python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$work/passphrase"
export TRUSTEDML_PASSPHRASE_FILE="$work/passphrase"
export TRUSTEDML_KEYS="$work/keys"

bold "1/4 trustedml keys init (TLS CA + keystore, Spark auth secret, enclave key; all sealed)"
trustedml keys init "$TRUSTEDML_KEYS"
trustedml keys show "$TRUSTEDML_KEYS" --check --json \
  | python -c 'import json,sys; d=json.load(sys.stdin); print("checks:", "; ".join(d["checks"])); print("enclave MRSIGNER:", d["fingerprints"]["enclave_mrsigner"])'

declare -a names codes secs results

run_job() {
  local name=$1 pattern=$2; shift 2
  bold "$name: trustedml submit $*"
  local start end code=0
  start=$(date +%s.%N)
  trustedml submit "$@" > "$work/$name.out" || code=$?
  end=$(date +%s.%N)
  head -n 25 "$work/$name.out"
  [ "$(wc -l < "$work/$name.out")" -gt 25 ] && echo "... ($(wc -l < "$work/$name.out") lines)"
  names+=("$name"); codes+=("$code")
  secs+=("$(python -c "print(f'{$end - $start:.1f}')")")
  results+=("$(grep -m1 -E "$pattern" "$work/$name.out" || echo '(expected output missing)')")
}

run_job pi "^Pi is roughly" examples/pi.py 4
run_job wordcount "^import: " examples/wordcount.py examples/sql_basic.py
run_job sql_basic "Justin" examples/sql_basic.py

bold "Summary (secure mode: authenticated AES-GCM RPC, encrypted shuffle/spill, TLS UI; TEE: none)"
status=0
printf '%-10s %-5s %-8s %s\n' job exit seconds output
for i in "${!names[@]}"; do
  printf '%-10s %-5s %-8s %s\n' "${names[$i]}" "${codes[$i]}" "${secs[$i]}" "${results[$i]}"
  [ "${codes[$i]}" = 0 ] || status=1
  [[ "${results[$i]}" != "(expected output missing)" ]] || status=1
done
exit $status
