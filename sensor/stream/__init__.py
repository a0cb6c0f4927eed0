"""Frames to streams: packet decoding, TCP reassembly as the receiver sees it, flow ids."""
