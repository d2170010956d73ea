"""The command line: LightningCLI wiring, start-up checks, concise errors, the tool command table."""
