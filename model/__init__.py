"""endofuse.model."""
