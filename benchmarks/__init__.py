"""Benchmarks of optax_adaptive: training quality and overhead."""
