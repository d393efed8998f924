"""The desktop app: a Qt front end on the same asyncio loop as the core (through qasync)."""
