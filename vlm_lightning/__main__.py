"""``python -m vlm_lightning <command>`` (see ``vlm_lightning.commands``)."""

from vlm_lightning.commands import main

if __name__ == "__main__":
    main()
