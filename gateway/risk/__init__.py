"""Per-request trust scoring."""
