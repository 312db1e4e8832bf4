"""Names and numbers of the emulated topology: devices, subnets, limits (see :mod:`commlib.cluster`)."""

DEVICE = "cl0"
STAR_SUBNET = "198.18.0."
LOOPBACK_SUBNET = "198.19.0."
MAX_NODES = 250
MAX_PATHS = 8
NODE_INDEX = 100  # ifindex of a node's end of its link (path p: NODE_INDEX + p)
PEER_INDEX = 1000  # ifindex of the other end (node i: PEER_INDEX + i)
