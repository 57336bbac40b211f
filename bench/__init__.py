"""The load and fault-injection harness.

It starts the services as processes and talks to them only through their HTTP and
NATS surfaces and the files they write: scenario, stack, load, faults, collection,
analysis, report.
"""
