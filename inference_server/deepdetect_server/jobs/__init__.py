"""Durable asynchronous jobs: long media scored off the request path, on any replica.

`model` (the job record), `store` (the interface and the in-process store), `redis_store` (the shared,
durable one), `runner` (claims, leases and heartbeats, exactly one final result), `callbacks` (signed
notifications, at least once). The HTTP routes are in `api/jobs.py`.
"""
