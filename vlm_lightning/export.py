"""``python -m vlm_lightning.export`` (the older form of ``python -m vlm_lightning export``)."""

from vlm_lightning.deploy.export import main

if __name__ == "__main__":
    main()
