"""Kafka as the bus uses it: clients, topics, the partitioner and topic readers.

The client factories every role shares (`clients`: the Faust app, the idempotent producer
wrapper, consumers, the admin client), the bus's topics, their checks and the one way to list
a topic's partitions (`topics`), the default partitioner (`partitioner`), the cluster watch
(`watch`) and windows of the events topics (`window`). Header names and reading a header
belong to the contract (`streams.contract.headers`). Knows the contract, nothing of routing.
"""
