"""The long-running sensor: its loop, control socket, metrics and logs."""
