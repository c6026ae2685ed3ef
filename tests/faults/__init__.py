"""Fault injection for the test suite: in-process loopback proxies (TCP and UDP) that cut,
reset, stall, delay, split, drop, duplicate and reorder what passes through them."""
