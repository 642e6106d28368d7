"""The pipeline's steps, one small class each, and the factory that orders them."""
