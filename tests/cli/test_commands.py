"""One entry point: ``python -m vlm_lightning <command>`` runs the trainer commands and every tool."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlm_lightning.cli.commands import TOOLS, main


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_each_tool_has_help_under_the_one_entry_point(tool: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([tool, "--help"])
    assert info.value.code == 0
    assert "usage: python -m vlm_lightning" in capsys.readouterr().out


def test_top_level_help_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vlm_lightning", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())
    assert "usage: python -m vlm_lightning" in text
    for name in (*TOOLS, "fit", "test"):
        assert name in text
    assert "Warning" not in proc.stderr


def test_top_level_help_does_not_import_the_trainer() -> None:
    """``--help`` answers without torch / Lightning (their import takes seconds on a small machine)."""
    code = (
        "import sys\n"
        "from vlm_lightning.cli.commands import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'transformers', 'jsonargparse') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


def test_top_level_help_lists_the_commands_and_where_settings_go() -> None:
    """The fast help lists LightningCLI's commands and says that settings follow the command."""
    from vlm_lightning.cli.commands import top_level_help

    text = " ".join(top_level_help().split())
    for word in ("fit", "validate", "test", "predict", "fit --config C.yaml", "--print_config"):
        assert word in text
    assert "{fit,validate,test,predict,export,infer,compare,tiny,synthetic}" in text  # the usage line: all
    assert "tiny tool: build an offline tiny replica" in text
