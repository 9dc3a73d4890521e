#!/bin/bash
# One SuperNode of the compose deployment: holds IEMOCAP session $SESSION, mounted read-only under
# $DATA_ROOT, and runs its ClientApp as a subprocess beside the data. Prints what it holds first, so
# `docker compose logs supernode-N` starts with the node's session.
#
#   SESSION=3 [DATA_ROOT=/data/IEMOCAP_full_release] [SUPERLINK=superlink:8000] [INSECURE=1] deploy/supernode.sh
# TLS + node authentication need /run/certs/ca.crt and /run/certs/supernode (deploy/entrypoint.sh).
set -euo pipefail
session=${SESSION:?set SESSION to the IEMOCAP session this node holds (1-5)}
root=${DATA_ROOT:-/data/IEMOCAP_full_release}
superlink=${SUPERLINK:-superlink:8000}
folder=$root/Session$session
[[ -d $folder ]] || { echo "Session$session: $folder is missing; mount \$IEMOCAP_ROOT/Session$session there" >&2; exit 2; }
sessions=$(find "$root" -mindepth 1 -maxdepth 1 -name 'Session*' -printf '%f ')
wavs=$(find "$folder" -name '*.wav' | wc -l)
if [[ ${INSECURE:-0} == 1 ]]; then
    security=(--insecure) mode="INSECURE (no TLS, no node authentication)"
else
    security=(--root-certificates /run/certs/ca.crt --auth-supernode-private-key /run/certs/supernode)
    mode="TLS, authenticated by its own key"
fi
echo "fedser supernode: Session$session ($wavs wav files in $folder; sessions visible: ${sessions% }), SuperLink $superlink, $mode"
# fedser-supernode: flower-supernode with shorter waits between messages (client/supernode.py).
exec fedser-supernode --superlink "$superlink" "${security[@]}" --isolation subprocess \
    --node-config "session=$session data-root='$root'"
