"""The event contract: what an event is and when it is valid, owned by no transport.

The CloudEvent envelope, the event types and their Avro schemas (`schemas/avro/` is the
source of truth; `models` is generated from it), the rules of SPEC §1 (`rules`, built on the
single-value checks in `values`), the routing attributes derived from `data`, schema
evolution (`compat` on top of Avro's `resolution`), and the codec that binds an envelope to
a Kafka record (`record`) or an HTTP body, reading the context attributes one way
(`context`). Imports only the ground floor.
"""
