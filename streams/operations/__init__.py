"""Operations: what an operator does with the bus once it runs.

Replays of the events topics into one subscription (`replay`; what is asked in
`replay_request`, the state and the rule of ownership in `replay_log`, this process's leases
in `replay_lease`), reconciliation of published against delivered (`reconcile`), the operator
audit trail (`audit`), the Logboek Dataverwerkingen of one person (`logboek`), and bulk
changes to the subscription set (`subscription_set`). Library code: the HTTP API and the CLI
both call it; neither holds its logic.
"""
