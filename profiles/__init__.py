"""Shipped agent profiles, seccomp profiles and the demo agents baked into the image."""
