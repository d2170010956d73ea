"""vlm_lightning: fine-tune small VLMs on document tasks."""

__version__ = "0.1.0"
