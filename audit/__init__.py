"""The tamper-evident audit trail, usable without the gateway (imports nothing of it)."""
