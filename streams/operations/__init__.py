"""Operations: what an operator does with the bus once it runs.

Replays of the events topics into one subscription (`replay`, its state and lease in
`replay_log`), reconciliation of published against delivered (`reconcile`), the operator
audit trail (`audit`), the Logboek Dataverwerkingen of one person (`logboek`), and bulk
changes to the subscription set (`subscription_set`). Library code: the HTTP API and the CLI
both call it; neither holds its logic.
"""
