"""The HTTP API (SPEC §4): a surface over the library.

`api` builds the application and serves publishing and the ZGW Notificaties bridge; the
route modules (`subscriptions`, `operations`, `audit`) share one kit (`kit`): errors, bodies,
the caller. No route holds a rule the library does not.
"""
