"""What both designs share: the message contract, the ledgers, configuration,
metrics, fault injection and the service lifecycle.

Nothing here knows whether a service talks HTTP or NATS to its peer; the variant
packages add only that.
"""
