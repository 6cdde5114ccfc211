"""endofuse.demo."""
