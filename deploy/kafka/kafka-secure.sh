#!/usr/bin/env bash
# A local Kafka broker that only lets clients in over TLS with a SCRAM login
# (SASL_SSL), as managed Kafka services do: kafka.sh with one more listener.
#
#   kafka-secure.sh start    make the CA, the broker's certificate and the SCRAM user
#                            (first start), start the broker, return once it answers;
#                            stdout is only KEY=value lines a shell can eval:
#                              eval "$(deploy/kafka/kafka-secure.sh start)"
#   kafka-secure.sh stop     stop it
#   kafka-secure.sh env      print those lines again (broker started earlier)
#
# Listeners, all on 127.0.0.1:
#   SASL_SSL   KAFKA_SECURE_PORT (9094)    the one clients use: TLS (certificate for
#                                          127.0.0.1 and localhost), SCRAM-SHA-256/512
#   PLAINTEXT  KAFKA_PORT (secure port+1)  inter-broker only (a single node talks to
#                                          itself); local, never advertised to anyone else
#   CONTROLLER KAFKA_CONTROLLER_PORT (+2)  KRaft controller, PLAINTEXT
# Inter-broker traffic stays on the internal PLAINTEXT listener: with one node
# it never leaves 127.0.0.1, and the broker needs no SCRAM login of its own.
#
# Files (KAFKA_STATE_DIR, default .run/kafka-secure-PORT): tls/ca.pem (the CA, PEM,
# for BUCKETSTREAM_KAFKA_CA_FILE), tls/other-ca.pem (a CA that signed nothing here:
# try the wrong-CA error with it), tls/broker.p12 (the broker's key store), and
# credentials (the SCRAM user's name and password, made at first start).
# KAFKA_SCRAM_USER (bucketstream) names the user; the JDK's keytool makes the keys.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sport=${KAFKA_SECURE_PORT:-9094}
port=${KAFKA_PORT:-$((sport + 1))}
cport=${KAFKA_CONTROLLER_PORT:-$((sport + 2))}
state=${KAFKA_STATE_DIR:-$PWD/.run/kafka-secure-$sport}
user=${KAFKA_SCRAM_USER:-bucketstream}
tls=$state/tls

die() { echo "kafka-secure.sh: $*" >&2; exit 1; }

random() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

certificates() {
  [ -f "$tls/broker.p12" ] && return
  command -v keytool >/dev/null 2>&1 || die "keytool not found: install a JDK 17 or newer"
  rm -rf "$tls"; mkdir -p "$tls"
  local pw; pw=$(random); echo "$pw" > "$tls/storepass"
  local kt=(keytool -storetype PKCS12 -storepass "$pw" -keyalg RSA -keysize 2048)
  {
    # the CA, exported as PEM for Python; and one more that signed nothing (wrong-CA drill)
    "${kt[@]}" -genkeypair -alias ca -dname "CN=bucketstream local CA" -validity 3650 -keystore "$tls/ca.p12" \
      -ext bc:c=ca:true -ext ku:c=keyCertSign,cRLSign
    keytool -exportcert -rfc -alias ca -keystore "$tls/ca.p12" -storepass "$pw" -file "$tls/ca.pem"
    "${kt[@]}" -genkeypair -alias ca -dname "CN=some other CA" -validity 3650 -keystore "$tls/other-ca.p12" \
      -ext bc:c=ca:true -ext ku:c=keyCertSign,cRLSign
    keytool -exportcert -rfc -alias ca -keystore "$tls/other-ca.p12" -storepass "$pw" -file "$tls/other-ca.pem"
    # the broker's key, its certificate signed by the CA for 127.0.0.1 and localhost
    "${kt[@]}" -genkeypair -alias broker -dname "CN=localhost" -validity 3650 -keystore "$tls/broker.p12"
    keytool -certreq -alias broker -keystore "$tls/broker.p12" -storepass "$pw" -file "$tls/broker.csr"
    keytool -gencert -alias ca -keystore "$tls/ca.p12" -storepass "$pw" -infile "$tls/broker.csr" \
      -outfile "$tls/broker.pem" -rfc -validity 3650 \
      -ext san=ip:127.0.0.1,dns:localhost -ext ku:c=digitalSignature,keyEncipherment -ext eku=serverAuth
    keytool -importcert -noprompt -alias ca -file "$tls/ca.pem" -keystore "$tls/broker.p12" -storepass "$pw"
    keytool -importcert -noprompt -alias broker -file "$tls/broker.pem" -keystore "$tls/broker.p12" -storepass "$pw"
  } >"$tls/keytool.log" 2>&1 || { cat "$tls/keytool.log" >&2; rm -f "$tls/broker.p12"; die "keytool failed"; }
}

properties() {
  local pw; pw=$(cat "$tls/storepass")
  cat > "$state/secure.properties" <<EOF
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$sport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$tls/broker.p12
ssl.keystore.password=$pw
ssl.key.password=$pw
ssl.client.auth=none
EOF
}

env_lines() {
  # shellcheck disable=SC1091
  . "$state/credentials"
  printf 'BUCKETSTREAM_BROKER=%q\n' "kafka://127.0.0.1:$sport"
  printf 'BUCKETSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL\n'
  printf 'BUCKETSTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-256\n'
  printf 'BUCKETSTREAM_KAFKA_USERNAME=%q\n' "$scram_user"
  printf 'BUCKETSTREAM_KAFKA_PASSWORD=%q\n' "$scram_password"
  printf 'BUCKETSTREAM_KAFKA_CA_FILE=%q\n' "$tls/ca.pem"
}

kafka() {
  KAFKA_PORT=$port KAFKA_CONTROLLER_PORT=$cport KAFKA_STATE_DIR=$state \
    KAFKA_PROPERTIES_FILE="$state/secure.properties" KAFKA_FORMAT_ARGS="${format_args:-}" \
    "$here/kafka.sh" "$@"
}

start() {
  mkdir -p "$state"
  certificates
  if [ ! -f "$state/credentials" ]; then
    [ ! -f "$state/data/meta.properties" ] || die "$state holds a broker formatted without our SCRAM user: remove $state"
    printf 'scram_user=%q\nscram_password=%q\n' "$user" "$(random)" > "$state/credentials"
  fi
  # shellcheck disable=SC1091
  . "$state/credentials"
  # the SCRAM user is created when the storage is formatted (first start only)
  format_args="--add-scram SCRAM-SHA-256=[name=$scram_user,password=$scram_password]"
  format_args+=" --add-scram SCRAM-SHA-512=[name=$scram_user,password=$scram_password]"
  properties
  kafka start >&2
  (exec 3<>"/dev/tcp/127.0.0.1/$sport") 2>/dev/null || die "the SASL_SSL listener does not answer on 127.0.0.1:$sport"
  echo "kafka-secure.sh: SASL_SSL on 127.0.0.1:$sport (user $scram_user, CA $tls/ca.pem)" >&2
  env_lines
}

case "${1:-}" in
  start) start ;;
  stop) kafka stop >&2 ;;
  env) [ -f "$state/credentials" ] || die "no secure broker state in $state"; env_lines ;;
  status) kafka status ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
