"""The realtime command-line commands: endofuse run and endofuse bench."""
