"""Offline replicas for tests, the demo and benchmarks: no hub, the real transformers classes.

``registry.build_tiny(family, folder)`` builds a tiny replica (one module per family group, each with
its chat template and the sources it mirrors); ``real_size`` builds real-size random-weight
architectures for throughput benchmarks; ``qwen_bpe`` rebuilds the real Qwen2 tokenizer.
"""
