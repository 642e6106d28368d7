"""The compliance console: web pages for compliance officers on the admin listener (docs/CONSOLE.md)."""
