"""Serving one model to many rooms: the wire format, the Ray Serve application, the room client."""
