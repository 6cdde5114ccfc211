"""endofuse.demo: the Gradio browser demo (`endofuse demo`).

    from endofuse.demo.app import build_app, launch_app
    launch_app(build_app())          # http://127.0.0.1:7860, bundled demo weights
"""
import os

# Gradio reads this when it is imported and when a Blocks is built; the demo
# must never phone home (it runs on closed clinical networks).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
