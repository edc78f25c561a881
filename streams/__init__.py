"""gemeentebus: the event backbone of Dutch municipalities and base registries.

Data flows one way through the modules of this package:
ingress (api, client) -> validate (contract, validation) -> route (subscriptions) -> deliver
(connectors).
"""
