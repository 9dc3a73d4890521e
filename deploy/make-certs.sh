#!/usr/bin/env bash
# TLS certificates and SuperNode keys for a fedser deployment (flwr 1.41).
#
#   deploy/make-certs.sh [OUT_DIR]        # default: deploy/certs (git-ignored)
#   SUPERLINK_SANS="DNS:fl.example.org,IP:10.0.0.5" deploy/make-certs.sh   # more names for the SuperLink
#
# Writes, and never overwrites (delete a file to make it again):
#   ca.crt, ca.key                  a self-signed CA (what SuperNodes and `flwr` trust: --root-certificates)
#   superlink.crt, superlink.key    the SuperLink's certificate, signed by the CA, with the subject
#                                   alternative names DNS:superlink (compose), DNS:localhost, IP:127.0.0.1
#                                   and $SUPERLINK_SANS
#   supernode-N, supernode-N.pub    one EC P-384 key per IEMOCAP session N=1..5, OpenSSH format (what
#                                   flower-supernode --auth-supernode-private-key loads); the .pub is
#                                   registered with `flwr supernode register`
set -euo pipefail

out=${1:-deploy/certs}
days=${CERT_DAYS:-365}
mkdir -p "$out"
cd "$out"

if [[ ! -f ca.crt ]]; then
    openssl req -x509 -newkey rsa:4096 -sha256 -nodes -days "$days" -subj "/CN=fedser-ca" \
        -keyout ca.key -out ca.crt 2>/dev/null
    echo "wrote $out/ca.crt"
fi

if [[ ! -f superlink.crt ]]; then
    sans="DNS:superlink,DNS:localhost,IP:127.0.0.1${SUPERLINK_SANS:+,$SUPERLINK_SANS}"
    openssl req -newkey rsa:4096 -sha256 -nodes -subj "/CN=superlink" \
        -keyout superlink.key -out superlink.csr 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
        "$sans" > superlink.ext
    openssl x509 -req -in superlink.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
        -extfile superlink.ext -out superlink.crt 2>/dev/null
    rm -f superlink.csr superlink.ext
    echo "wrote $out/superlink.crt ($sans)"
fi

for session in 1 2 3 4 5; do
    if [[ ! -f supernode-$session ]]; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedser-session-$session" -f "supernode-$session"
        echo "wrote $out/supernode-$session(.pub)"
    fi
done
# Private keys: their owner alone. The image's entrypoint hands a mounted key to its container user
# (uid 49999) through a private tmpfs copy (deploy/entrypoint.sh), so nothing here names that uid.
chmod 600 ./*.key supernode-? 2>/dev/null || true
