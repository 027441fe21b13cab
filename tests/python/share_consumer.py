"""A share topic read as a Kafka user would: Confluent's DeserializingConsumer.

Run with the virtualenv scripts/python-env.sh prepares:

  share_consumer.py BOOTSTRAP REGISTRY_URL TOPIC GROUP

Subscribes to TOPIC on the Kafka broker at BOOTSTRAP as consumer group GROUP
(from the earliest offset when the group has none), decodes keys and values
with AvroDeserializer, which fetches the writer schemas of the ids in the
Confluent frames from the schema registry at REGISTRY_URL, reads up to the
topic's end as it was when the partitions were assigned, commits the group's
offsets and exits.

Prints one JSON line per record:
  {"partition": P, "offset": O, "key": {...} or null,
   "value": {...} or null (a tombstone), "headers": {name: text}}
and nothing else on stdout. Values the JSON encoder does not know (decimals,
dates, bytes) are printed as text.

Credentials of the registry come from the environment, as for
confluent_client.py: BACKFLOW_REGISTRY_BASIC=user:token or
BACKFLOW_REGISTRY_BEARER=token.

Errors go to stderr with a non-zero exit.
"""
import json
import os
import sys
import time

from confluent_kafka import DeserializingConsumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from confluent_client import registry_conf  # noqa: E402

# Seconds to wait for the group's assignment and then for the records up to
# the end.
DEADLINE = 60


def text(v):
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return v.hex()
    return str(v)


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    bootstrap, url, topic, group = sys.argv[1:5]
    registry = SchemaRegistryClient(registry_conf(url))
    consumer = DeserializingConsumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "key.deserializer": AvroDeserializer(registry),
        "value.deserializer": AvroDeserializer(registry),
    })
    consumer.subscribe([topic])
    until = time.monotonic() + DEADLINE
    ends = None  # partition -> high watermark when assigned
    seen = {}  # partition -> next offset to read
    while True:
        if time.monotonic() > until:
            sys.exit(f"{topic}: not at its end within {DEADLINE} s: ends {ends}, positions {seen}")
        msg = consumer.poll(0.2)
        if ends is None:
            assigned = consumer.assignment()
            if not assigned:
                continue
            ends = {}
            for tp in assigned:
                _, high = consumer.get_watermark_offsets(tp, timeout=10)
                ends[tp.partition] = high
            # Where the group resumes: its committed offset, else the start.
            for tp in consumer.committed(assigned, timeout=10):
                seen.setdefault(tp.partition, max(tp.offset, 0))
        if msg is not None:
            if msg.error():
                raise KafkaException(msg.error())
            headers = {k: text(v) for k, v in (msg.headers() or [])}
            print(json.dumps({
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": msg.key(),
                "value": msg.value(),
                "headers": headers,
            }, ensure_ascii=False, sort_keys=True, default=text), flush=True)
            seen[msg.partition()] = max(seen.get(msg.partition(), 0), msg.offset() + 1)
        # Share topics are written in Kafka transactions: a partition's last
        # offset may be a commit marker, which is never delivered but which
        # the consumer's position passes.
        for tp in consumer.position(list(consumer.assignment())):
            if tp.offset >= 0:
                seen[tp.partition] = max(seen.get(tp.partition, 0), tp.offset)
        if all(seen.get(p, 0) >= end for p, end in ends.items()):
            break
    if any(end > 0 for end in ends.values()):
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in seen.items()],
                        asynchronous=False)
    consumer.close()


if __name__ == "__main__":
    main()
