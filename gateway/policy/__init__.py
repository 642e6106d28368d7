"""Policy decisions: the engine interface and the decision document."""
