"""Airlock's D-Bus surface: the portal each session's agent talks to."""
