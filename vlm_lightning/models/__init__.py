"""Model families, loading, PEFT wrapping and offline tiny replicas."""
