"""Airlock's core: profiles, grants, sessions, policy and events. No Qt, no D-Bus."""
