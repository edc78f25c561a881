"""Kafka as the bus uses it: clients, topics, the partitioner, headers and topic readers.

The Faust application and the one producer wrapper every role shares (`clients`), the bus's
topics and their checks (`topics`), the default partitioner (`partitioner`), the header names
and the one way to read a header or list a topic's partitions (`headers`), the cluster watch
(`watch`) and windows of the events topics (`window`). Knows the contract, nothing of routing.
"""
