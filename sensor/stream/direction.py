"""The two directions of a TCP connection, named once for reassembly and the SMTP dissector.

The client is the connection's originator (the sender of the SYN, or for a
flow picked up mid-stream the side whose peer's port is an SMTP port); the
server is the responder.
"""

__all__ = ["CLIENT", "SERVER"]

CLIENT = "client"   # octets sent by the originator to the responder
SERVER = "server"   # octets sent by the responder to the originator
