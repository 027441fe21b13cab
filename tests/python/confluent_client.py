"""Confluent's own Python client against backflow's schema registry.

Run with the virtualenv scripts/python-env.sh prepares; no Kafka is needed,
only the registry (the serializers are called directly with a
SerializationContext).

  confluent_client.py URL serialize TOPIC
      AvroSerializer with auto.register.schemas registers the Resident schema
      under TOPIC-value and frames a record; prints the framed bytes as hex.
  confluent_client.py URL deserialize TOPIC HEX
      AvroDeserializer decodes Confluent-framed bytes (written by backflow),
      fetching the writer schema by the id in the frame; prints the record as
      JSON.

Credentials come from the environment (never the command line):
  BACKFLOW_REGISTRY_BASIC=user:token   basic.auth.user.info: the token as the
                                       password, the user name ignored
  BACKFLOW_REGISTRY_BEARER=token       a static bearer token
Without either the client sends none (backflow's registry answers 40101).

Errors go to stderr with a non-zero exit; stdout holds only the result.
"""
import os
import json
import sys

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

RESIDENT = json.dumps({
    "type": "record",
    "name": "Resident",
    "namespace": "backflow.test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "region_code", "type": "string"},
        {"name": "income", "type": ["null", "double"], "default": None},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
})

RECORD = {
    "id": 1,
    "name": "杭州市西湖区",
    "region_code": "330106",
    "income": 1234.5,
    "tags": ["回流", "district"],
}


def registry_conf(url):
    """The client's configuration, with the credentials of the environment."""
    conf = {"url": url}
    basic = os.environ.get("BACKFLOW_REGISTRY_BASIC")
    bearer = os.environ.get("BACKFLOW_REGISTRY_BEARER")
    if basic:
        conf["basic.auth.user.info"] = basic
    elif bearer:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = bearer
        # A Confluent Cloud routing header the client requires with a
        # static token; backflow's registry does not read it.
        conf["bearer.auth.logical.cluster"] = "backflow"
    return conf


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    url, mode, topic = sys.argv[1:4]
    client = SchemaRegistryClient(registry_conf(url))
    ctx = SerializationContext(topic, MessageField.VALUE)
    if mode == "serialize":
        ser = AvroSerializer(client, RESIDENT, conf={"auto.register.schemas": True})
        framed = ser(RECORD, ctx)
        # A second record goes through the client's cache: same id.
        again = ser(dict(RECORD, id=2), ctx)
        if again[:5] != framed[:5]:
            sys.exit(f"second record framed with another id: {again[:5].hex()} vs {framed[:5].hex()}")
        print(framed.hex())
    elif mode == "deserialize":
        if len(sys.argv) != 5:
            sys.exit(__doc__)
        de = AvroDeserializer(client)
        record = de(bytes.fromhex(sys.argv[4]), ctx)
        print(json.dumps(record, ensure_ascii=False, sort_keys=True))
    else:
        sys.exit(f"unknown mode {mode!r}\n{__doc__}")


if __name__ == "__main__":
    main()
