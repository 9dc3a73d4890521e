#!/usr/bin/env bash
# Register the SuperNode public keys made by deploy/make-certs.sh with a TLS SuperLink that runs
# with --enable-supernode-auth. Keys already registered are left as they are, so this can run at
# every start-up (the compose `register` service does).
#
#   deploy/register-supernodes.sh SUPERLINK_HOST:PORT CERT_DIR [SESSION ...]   # default sessions: 1 2 3 4 5
set -euo pipefail
address=${1:?usage: $0 SUPERLINK_HOST:PORT CERT_DIR [SESSION ...]}
certs=$(cd "${2:?usage: $0 SUPERLINK_HOST:PORT CERT_DIR [SESSION ...]}" && pwd)
shift 2
if [[ $# -gt 0 ]]; then sessions=("$@"); else sessions=(1 2 3 4 5); fi

# A throw-away Flower config with one TLS connection: the user's ~/.flwr stays untouched.
export FLWR_HOME
FLWR_HOME=$(mktemp -d)
trap 'rm -rf "$FLWR_HOME"' EXIT
printf '[superlink]\ndefault = "fedser"\n\n[superlink.fedser]\naddress = "%s"\nroot-certificates = "%s"\n' \
    "$address" "$certs/ca.crt" > "$FLWR_HOME/config.toml"

for session in "${sessions[@]}"; do
    key="$certs/supernode-$session.pub"
    [[ -f $key ]] || { echo "error: $key missing; run deploy/make-certs.sh" >&2; exit 2; }
    if out=$(flwr supernode register "$key" fedser --name "session-$session" 2>&1); then
        echo "Session$session: registered"
    elif grep -q "already in use" <<< "$out"; then
        echo "Session$session: already registered"
    else
        echo "$out" >&2
        exit 1
    fi
done
