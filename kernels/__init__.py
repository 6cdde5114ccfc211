"""endofuse.kernels."""
