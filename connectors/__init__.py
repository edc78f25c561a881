"""The edges of gemeentebus: the local Kafka launcher, webhook and Kafka delivery, ZGW bridge."""
