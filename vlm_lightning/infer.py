"""``python -m vlm_lightning.infer``: see ``vlm_lightning.deploy.inference``."""

from vlm_lightning.deploy.inference import main

if __name__ == "__main__":
    main()
