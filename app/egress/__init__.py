"""Egress: the agent's only way out is a proxy that checks, logs, asks and holds the keys.

Pure parts (no I/O): `policy` (where may a request go), `requests` (what a parsed HTTP request
asks for, and how it is rewritten upstream), `inspect` (what an upload carries), `limits`
(bandwidth). The one module that touches sockets is `proxy`; `bridge` plugs a proxy and its
sidecar into a session; `keys` reads credentials from the keyring.
"""
