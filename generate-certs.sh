#!/usr/bin/env bash
# generate-certs.sh: the same files as `mcp-docker gencert`, made with the openssl CLI.
#
#   ./generate-certs.sh [-o DIR] [-d DAYS] [-n HOSTNAME]... [-c CLIENT_NAME] [-f]
#
# Both commands use a small local CA in DIR (ca.crt, ca.key; made on first use, 10 years).
# Without -c: a server certificate (EC P-256) signed by that CA, with SANs localhost, 127.0.0.1, ::1
# and every -n value, as DIR/server.crt (the certificate, then the CA: a full chain) and
# DIR/server.key. Clients trust DIR/ca.crt (Node clients: NODE_EXTRA_CA_CERTS=DIR/ca.crt).
# With -c NAME: a client certificate (CN=NAME) for mTLS, signed by the same CA, as
# DIR/client-NAME.crt and DIR/client-NAME.key. Give the server ca.crt with --tls-client-ca.
# Keys are written with mode 600; existing files are never replaced without -f.
set -euo pipefail
umask 077

out="${HOME}/.mcp-docker/tls"
days=365
client=""
force=0
names=(localhost 127.0.0.1 ::1)
while getopts "o:d:n:c:fh" opt; do
  case "$opt" in
    o) out=$OPTARG ;;
    d) days=$OPTARG ;;
    n) names+=("$OPTARG") ;;
    c) client=$OPTARG ;;
    f) force=1 ;;
    h) sed -n '2,15p' "$0"; exit 0 ;;
    *) sed -n '2,15p' "$0" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "openssl is not installed" >&2; exit 1; }
[[ "$days" =~ ^[0-9]+$ ]] && (( days >= 1 && days <= 3650 )) || { echo "-d: days must be 1..3650" >&2; exit 2; }
mkdir -p "$out"
chmod 700 "$out"

refuse_existing() {
  for f in "$@"; do
    if [[ -e "$f" && $force -eq 0 ]]; then echo "$f exists; use -f to replace it" >&2; exit 1; fi
  done
}

# Write to a temp file in the same directory, then rename: a file is either old or complete.
install_file() {  # install_file TEMP DEST MODE
  chmod "$3" "$1"
  mv -f "$1" "$2"
}

tmp=$(mktemp -d "$out/.tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

make_ca() {  # the local CA, once: it signs the server certificate and the client certificates
  if [[ ! -e "$out/ca.crt" || ! -e "$out/ca.key" ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
      -subj "/CN=mcp-docker local CA" -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -keyout "$tmp/ca.key" -out "$tmp/ca.crt" 2>/dev/null
    install_file "$tmp/ca.key" "$out/ca.key" 600
    install_file "$tmp/ca.crt" "$out/ca.crt" 644
    echo "created local CA: $out/ca.crt (give it to the server with --tls-client-ca; clients trust it)"
  fi
}

if [[ -z "$client" ]]; then
  refuse_existing "$out/server.crt" "$out/server.key"
  make_ca
  san=""
  for n in "${names[@]}"; do
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:${n},"; else san+="DNS:${n},"; fi
  done
  san=${san%,}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=${names[3]:-localhost}" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$san" > "$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days "$days" -sha256 -extfile "$tmp/ext.cnf" -out "$tmp/leaf.crt" 2>/dev/null
  cat "$tmp/leaf.crt" "$out/ca.crt" > "$tmp/server.crt"   # a full chain: the certificate, then the CA
  install_file "$tmp/server.key" "$out/server.key" 600
  install_file "$tmp/server.crt" "$out/server.crt" 644
  echo "server certificate: $out/server.crt (with the CA after it)"
  echo "server key:         $out/server.key (mode 600)"
  echo "SANs: ${san}; valid ${days} days"
  echo "serve with: mcp-docker serve --transport http --tls-cert $out/server.crt --tls-key $out/server.key"
  echo "trust it on each client machine: $out/ca.crt (Node clients: NODE_EXTRA_CA_CERTS=$out/ca.crt)"
  exit 0
fi

[[ "$client" =~ ^[A-Za-z0-9_.@:+-]{1,64}$ ]] || { echo "-c: use letters, digits and _ . @ : + - (at most 64)" >&2; exit 2; }
make_ca
refuse_existing "$out/client-$client.crt" "$out/client-$client.key"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=${client}" \
  -keyout "$tmp/client.key" -out "$tmp/client.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n' > "$tmp/ext.cnf"
openssl x509 -req -in "$tmp/client.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -CAserial "$tmp/ca.srl" -days "$days" -sha256 -extfile "$tmp/ext.cnf" -out "$tmp/client.crt" 2>/dev/null
install_file "$tmp/client.key" "$out/client-$client.key" 600
install_file "$tmp/client.crt" "$out/client-$client.crt" 644
echo "client certificate: $out/client-$client.crt"
echo "client key:         $out/client-$client.key (mode 600)"
echo "principal (CN):     $client"
