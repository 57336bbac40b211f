"""The queue design: the requestor and the generators talk only through NATS.

`transport.Broker` holds the connection, the publishes and the consumer loops, in
JetStream mode (stored, acknowledged: at least once) or core mode (at most once);
`topology` names the subjects, streams and consumers; `requestor` and `generator` hold
only their roles. What both designs share lives in `service_core`.
"""
