"""Output: the HUD and overlay drawing, and the sinks (video, window, frames folder)."""
