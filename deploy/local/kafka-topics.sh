#!/usr/bin/env bash
# Kafka's own topic tool against the local broker, for looking around by hand:
#   deploy/local/kafka-topics.sh --list
#   deploy/local/kafka-topics.sh --describe --topic commerce.orders
#   deploy/local/kafka-topics.sh --create --topic scratch --partitions 3
# With KAFKA_TOOL=groups it runs the consumer-group tool instead:
#   KAFKA_TOOL=groups deploy/local/kafka-topics.sh --describe --all-groups
# The project's own scripts do not use it (`tanto topics ensure` makes topics).
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -f $KAFKA_LIBS/.installed ]] || die "kafka jars missing: run deploy/local/install.sh"
case "${KAFKA_TOOL:-topics}" in
  topics) class=org.apache.kafka.tools.TopicCommand ;;
  groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  *) die "KAFKA_TOOL must be topics or groups" ;;
esac
exec java -Xmx256m "-Dlog4j2.configurationFile=$ROOT/deploy/kafka/log4j2.xml" \
  -Dkafka.root.log.level=ERROR -cp "$KAFKA_LIBS/*" "$class" \
  --bootstrap-server "${KAFKA_BROKERS:-127.0.0.1:9092}" "$@"
