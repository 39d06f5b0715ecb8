#!/usr/bin/env bash
# Regenerates the test certificates of src/remote/tls.rs (feature `remote-tls`): two CAs
# ("test" and "other"), each with a server certificate for 127.0.0.1/localhost and a client
# certificate. EC P-256 keys in PKCS#8, the v3 extensions webpki requires, valid 100 years.
# Test-only material: never use these keys for anything else.
set -euo pipefail
cd "$(dirname "$0")"
DAYS=36525

# ca NAME SUBJECT: a self-signed CA (basicConstraints CA:TRUE, keyCertSign).
ca() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days "$DAYS" -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$1.pem"
}

# leaf NAME CA SUBJECT EKU SAN: a leaf certificate signed by CA.
leaf() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$3" -out "$1.csr"
  cat > "$1.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$4
subjectAltName=$5
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
    -sha256 -days "$DAYS" -extfile "$1.ext" -out "$1.pem"
  rm -f "$1.csr" "$1.ext"
}

ca ca "smolvm-harness test CA"
leaf server ca "127.0.0.1" serverAuth "IP:127.0.0.1,DNS:localhost"
leaf client ca "smolvm-harness test client" clientAuth "DNS:client.test"

ca other-ca "smolvm-harness other CA"
leaf other-server other-ca "127.0.0.1" serverAuth "IP:127.0.0.1,DNS:localhost"
leaf other-client other-ca "smolvm-harness other client" clientAuth "DNS:client.test"

# The CA keys are not needed once the leaves are signed: this script remakes the whole set.
rm -f ./*.srl ca.key other-ca.key
