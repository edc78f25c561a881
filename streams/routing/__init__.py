"""Routing: who receives which event. Subscriptions, their filters, and the worker.

A `Subscription` and its projection (`subscriptions`), the filter dialects (`filters`), the
records of the compacted subscriptions topic and the store that reads them (`records`,
`store`), matching an event to subscriptions (`matching`), the intake rules a new
subscription must meet (`intake`), the router, and the worker that validates the ingress
topic and routes each accepted event to `gemeentebus.deliver.<id>` (`worker`).
"""
