"""Tests against hostile peers: callers sending crafted bodies and headers, backends sending crafted replies."""
