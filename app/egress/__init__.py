"""Egress: the agent's only way out is a proxy that checks, logs, asks and holds the keys.

Pure parts (no I/O): `policy` (where may a request go), `requests` (what a parsed HTTP request
asks for, and how it is rewritten upstream), `inspect` (what an upload carries), `uploads`
(the one rule of when an upload waits for the user), `scrub` (masking a route's credential
in answers), `records` (what the log keeps of an exchange), `limits` (bandwidth), `blocked`
(the sidecar witness's reports of attempts to leave around the proxy), and `exchange`, the
proxy's core: an agent connection as a generator of commands, tested without sockets.
The modules that touch sockets: `proxy` (the thin driver performing the core's commands),
`splice` (kernel-moved bytes), `witness` (the witness's reports, read); `bridge` plugs a
proxy, its relay and the witness into a session through one sidecar; `keys` reads
credentials from the keyring.
"""
