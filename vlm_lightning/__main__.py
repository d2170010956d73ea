"""``python -m vlm_lightning <command>`` (see ``vlm_lightning.cli.commands``)."""

from vlm_lightning.cli.commands import main

if __name__ == "__main__":
    main()
