"""The demo and its parts: the whole bus on a local broker with realistic traffic.

`run` is `gemeentebus demo`; `receivers` are its subscribers (real HTTP servers on loopback
that verify every signature); `generators` make the seeded, realistic events that the demo,
the benchmarks, the fault-injection suite and the tests use, and `invalid` the corpus that
breaks each rule once.
"""
