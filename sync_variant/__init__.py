"""The synchronous design: the requestor calls a generator over HTTP and waits.

Every outbound call goes through `peer.PeerClient`, optionally guarded by a circuit
breaker (`breaker.Breaker`); confirmations travel back by the generators polling the
requestor. What both designs share lives in `service_core`.
"""
