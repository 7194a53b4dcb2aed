"""Benchmarks of the order gateway against its performance targets: translation, HTTP load, memory, the
production features' cost, webhook intake and hostile inputs."""
