#!/bin/sh
# The secured compose broker's entrypoint (apache/kafka image): server.properties plus the
# broker's PEM key and chain inline and its SCRAM password, then format once with a SCRAM
# user per password file of the credentials folder (`gemeentebus kafka certs`), then start.
set -eu
creds=${GEMEENTEBUS_KAFKA_CREDENTIALS:-/etc/gemeentebus/kafka}
template=${GEMEENTEBUS_KAFKA_PROPERTIES:-/etc/gemeentebus/server.properties}
kafka=${KAFKA_HOME:-/opt/kafka}
data=$(sed -n 's/^log\.dirs=//p' "$template")
props=$(mktemp)  # holds the key and a password: the container's /tmp, 0600
cp "$template" "$props"

inline() {  # a PEM file on one properties line: its newlines as \n escapes
  awk 'NR > 1 { printf "\\n" } { printf "%s", $0 }' "$1"
}
{
  printf 'ssl.keystore.certificate.chain=%s\n' "$(inline "$creds/broker.crt")"
  printf 'ssl.keystore.key=%s\n' "$(inline "$creds/broker.key")"
  printf 'listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="%s";\n' \
    "$(head -n 1 "$creds/broker.password")"
} >>"$props"

if [ ! -f "$data/meta.properties" ]; then
  set --
  for file in "$creds"/*.password; do
    user=$(basename "$file" .password)
    set -- "$@" --add-scram "SCRAM-SHA-512=[name=$user,password=$(head -n 1 "$file")]"
  done
  "$kafka/bin/kafka-storage.sh" format --standalone -c "$props" \
    -t "$("$kafka/bin/kafka-storage.sh" random-uuid)" "$@"
fi
# For the healthcheck: Kafka's own tools as admin (kafka-broker-api-versions.sh).
admin=/tmp/gemeentebus-admin.properties
(umask 077 && cat >"$admin" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(head -n 1 "$creds/admin.password")";
ssl.truststore.type=PEM
ssl.truststore.location=$creds/ca.crt
PROPERTIES
)
exec "$kafka/bin/kafka-server-start.sh" "$props"
