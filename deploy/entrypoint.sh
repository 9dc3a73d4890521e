#!/bin/bash
# The image's entrypoint. As root: copies what is mounted under /certs (CA certificate, the TLS key
# or one SuperNode's private key, kept 0600 by deploy/make-certs.sh and owned by whoever made them)
# into /run/certs, a tmpfs readable by the app user alone, then re-executes itself as that user
# (uid 49999). As the app user: runs the command. The keys never become readable by anyone else.
set -euo pipefail
if [[ $(id -u) == 0 ]]; then
    if [[ -d /certs ]]; then
        install -d -m 0700 -o app -g app /run/certs
        for file in /certs/*; do
            [[ -f $file ]] && install -m 0600 -o app -g app "$file" /run/certs/
        done
    fi
    # setpriv keeps the environment: HOME must be the app user's (matplotlib, Flower write under it).
    HOME=/app USER=app exec setpriv --reuid=app --regid=app --init-groups -- "$0" "$@"
fi
exec "$@"
