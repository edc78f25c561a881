"""Delivery's records: the delivery log and the dead letters, with redrive.

What every delivery attempt leaves behind (`log`), and what could not be delivered within
the retry window (`dlq`). The transports that deliver (webhook, courier, dispatcher) are the
edges in `connectors/`; the retry policy they all ask is `streams.retry`.
"""
