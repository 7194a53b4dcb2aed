"""Benchmarks of the order gateway: translation in process, HTTP load, memory, bulk updates and profiles."""
