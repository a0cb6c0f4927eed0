"""Where frames come from: the live event ring, pcap files (replay), and the pcap writer."""
