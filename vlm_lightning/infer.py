"""``python -m vlm_lightning.infer``: see ``vlm_lightning.inference``."""

from vlm_lightning.inference import main

if __name__ == "__main__":
    main()
