"""Where frames come from: files, folders, capture devices, streams, synthetic scenes."""
