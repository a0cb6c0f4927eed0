"""Test and demo infrastructure, not the product: the network-namespace lab
(network.py: namespaces, veth, addresses, clients; gateway.py: the same with
a router namespace between client and server; postfix.py: a real Postfix in
the server namespace), its aiosmtpd server (server.py) and BDAT client
(client.py), and the demo (demo.py, ``smtp-sensor demo``)."""
