"""Training: the LightningModule, its loss (fused head + cross-entropy), FSDP2 sharding, profiling."""
