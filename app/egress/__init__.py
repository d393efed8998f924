"""Egress: the agent's only way out is a proxy that checks, logs, asks and holds the keys.

Pure parts (no I/O): `policy` (where may a request go), `requests` (what a parsed HTTP request
asks for, and how it is rewritten upstream), `inspect` (what an upload carries), `limits`
(bandwidth), `blocked` (the sidecar witness's reports of attempts to leave around the proxy).
The one module that touches sockets is `proxy`; `bridge` plugs a proxy, its relay and the
witness into a session through one sidecar; `keys` reads credentials from the keyring.
"""
