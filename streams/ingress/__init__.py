"""Ingress: the gate every published event passes, and the publishers that reach it.

`gate` turns a record or a request into an accepted event or a rejection with a reason;
`client` is the publisher SDK (over Kafka or HTTP); `metrics` counts what passed, by type and
error code, never by personal data.
"""
