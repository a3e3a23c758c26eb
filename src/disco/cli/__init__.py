"""The command-line layer: parses arguments, calls the core, prints."""
