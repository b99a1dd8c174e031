#!/bin/sh
# Makes a development CA and a wildcard server certificate for *.DOMAIN
# (default sandbox.localhost) with the openssl command line.
#
#   certs/make-dev-certs.sh [DOMAIN] [OUTDIR]
#
# Writes OUTDIR/ca.pem (trust this: curl --cacert), OUTDIR/ca.key,
# OUTDIR/DOMAIN.pem (leaf + CA chain) and OUTDIR/DOMAIN.key. Existing files
# are kept unless they are about to expire, so repeated runs are cheap.
set -eu
DOMAIN=${1:-sandbox.localhost}
OUT=${2:-$(cd "$(dirname "$0")" && pwd)/dev}
DAYS=${SANDGATE_CERT_DAYS:-825}
mkdir -p "$OUT"
umask 077

if [ ! -f "$OUT/ca.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$OUT/ca.pem" >/dev/null; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$OUT/ca.key" -out "$OUT/ca.pem" -days 3650 \
        -subj "/CN=sandgate development CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

LEAF="$OUT/$DOMAIN"
if [ ! -f "$LEAF.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$LEAF.pem" >/dev/null ||
    [ "$OUT/ca.pem" -nt "$LEAF.pem" ]; then
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$LEAF.key" -out "$LEAF.csr" -subj "/CN=*.$DOMAIN" 2>/dev/null
    EXT=$(mktemp)
    printf 'subjectAltName=DNS:*.%s,DNS:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
        "$DOMAIN" "$DOMAIN" >"$EXT"
    openssl x509 -req -in "$LEAF.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial \
        -out "$LEAF.crt" -days "$DAYS" -extfile "$EXT" 2>/dev/null
    cat "$LEAF.crt" "$OUT/ca.pem" >"$LEAF.pem"
    rm -f "$LEAF.csr" "$LEAF.crt" "$EXT"
fi
chmod 644 "$OUT/ca.pem" "$LEAF.pem"
echo "$LEAF.pem"
