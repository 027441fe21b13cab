"""Confluent's own Python client against backflow's schema registry.

serialize URL TOPIC      registers the test schema (auto.register.schemas)
                         and prints the Confluent-framed bytes of a record, hex
deserialize URL TOPIC HEX  decodes framed bytes written by backflow and prints
                         the record as JSON
"""
import json
import sys

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMA = json.dumps({
    "type": "record",
    "name": "Resident",
    "namespace": "backflow.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "region_code", "type": "string"},
        {"name": "income", "type": ["null", "double"], "default": None},
    ],
})


def main():
    mode, url, topic = sys.argv[1:4]
    client = SchemaRegistryClient({"url": url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    if mode == "serialize":
        ser = AvroSerializer(client, SCHEMA, conf={"auto.register.schemas": True})
        record = {"id": 1, "name": "杭州市西湖区", "region_code": "330106", "income": 1234.5}
        print(ser(record, ctx).hex())
    elif mode == "deserialize":
        de = AvroDeserializer(client)
        print(json.dumps(de(bytes.fromhex(sys.argv[4]), ctx), ensure_ascii=False))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
