"""``python -m vlm_lightning``."""

from vlm_lightning.cli import main

if __name__ == "__main__":
    main()
