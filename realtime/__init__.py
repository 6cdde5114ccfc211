"""endofuse.realtime."""
