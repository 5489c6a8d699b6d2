#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Test credentials for the migration channel, made with GnuTLS's certtool in
# the layout of QEMU's tls-creds-x509 directories:
#   DIR/good/    ca-cert.pem, server-{cert,key}.pem (names: localhost,
#                127.0.0.1, ::1), client-{cert,key}.pem, all from one CA
#   DIR/other/   the same from another CA (a peer we must not trust)
#   DIR/wrongname/ the good CA, a server certificate for "elsewhere.example"
#   DIR/intruder/  the good CA, a client certificate named "uvfio-intruder"
#   DIR/good.psk, DIR/wrong.psk  "uvfio:HEXKEY" (different keys)
# Usage: tests/tls/make-creds.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
key() { certtool --generate-privkey --key-type=ecdsa --curve=secp256r1 --outfile "$1" 2>/dev/null; }
ca() {  # $1 = dir, $2 = CA name
  mkdir -p "$1"
  key "$1/ca-key.pem"
  printf 'cn = "%s"\nca\ncert_signing_key\nexpiration_days = 3650\n' "$2" > "$1/ca.info"
  certtool --generate-self-signed --load-privkey "$1/ca-key.pem" --template "$1/ca.info" \
    --outfile "$1/ca-cert.pem" 2>/dev/null
}
leaf() {  # $1 = dir, $2 = server|client, $3.. = DNS names / IPs (server)
  local d=$1 role=$2
  shift 2
  key "$d/$role-key.pem"
  {
    echo "cn = \"uvfio-$role\""
    echo "expiration_days = 3650"
    echo "signing_key"
    echo "encryption_key"
    if [ "$role" = server ]; then
      echo "tls_www_server"
      for n in "$@"; do
        case $n in *[0-9].*[0-9] | *:*) echo "ip_address = \"$n\"" ;; *) echo "dns_name = \"$n\"" ;; esac
      done
    else
      echo "tls_www_client"
    fi
  } > "$d/$role.info"
  certtool --generate-certificate --load-privkey "$d/$role-key.pem" --load-ca-certificate "$d/ca-cert.pem" \
    --load-ca-privkey "$d/ca-key.pem" --template "$d/$role.info" --outfile "$d/$role-cert.pem" 2>/dev/null
}
ca good "uvfio test CA"
leaf good server localhost 127.0.0.1 ::1
leaf good client
ca other "another CA"
leaf other server localhost 127.0.0.1 ::1
leaf other client
mkdir -p wrongname
cp good/ca-cert.pem good/ca-key.pem wrongname/
leaf wrongname server elsewhere.example
cp good/client-cert.pem good/client-key.pem wrongname/
# A source certificate from the good CA under another name (--tls-authz).
mkdir -p intruder
cp good/ca-cert.pem good/ca-key.pem intruder/
key intruder/client-key.pem
printf 'cn = "uvfio-intruder"\nexpiration_days = 3650\nsigning_key\nencryption_key\ntls_www_client\n' > intruder/client.info
certtool --generate-certificate --load-privkey intruder/client-key.pem --load-ca-certificate intruder/ca-cert.pem \
  --load-ca-privkey intruder/ca-key.pem --template intruder/client.info --outfile intruder/client-cert.pem 2>/dev/null
echo "uvfio:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > good.psk
echo "uvfio:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" > wrong.psk
chmod 600 good.psk wrong.psk ./*/*-key.pem
