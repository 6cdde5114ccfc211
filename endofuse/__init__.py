"""endofuse: real-time WLI/NBI fusion segmentation of laryngo-pharyngeal tumours.

Subpackages: `endofuse.kernels` (Triton ops), `endofuse.model` (the network),
`endofuse.train` (data, training, evaluation), `endofuse.realtime` (engines and
the live pipeline), `endofuse.demo` (the browser demo).
"""
__version__ = "0.1.0"
