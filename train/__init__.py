"""endofuse.train."""
