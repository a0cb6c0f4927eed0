"""Test and demo infrastructure: network-namespace lab, its SMTP server and client, the demo."""
