"""The tools' argument parser: options spelt in full, a mistake is one error line plus where the help is."""

from __future__ import annotations

import pytest

from vlm_lightning.cli.tool_parser import ToolArgumentParser
from vlm_lightning.deploy.inference import main as infer_main


def _parser() -> ToolArgumentParser:
    parser = ToolArgumentParser(prog="python -m vlm_lightning demo", description="demo tool")
    parser.add_argument("--images-dir")
    parser.add_argument("--image")
    return parser


def test_a_prefix_of_an_option_is_not_taken_for_it(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args(["--images", "a.png"])  # argparse's default would read --images-dir a.png
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "python -m vlm_lightning demo: error: unrecognized arguments: --images a.png",
        "(all options: python -m vlm_lightning demo --help)",
    ]
    assert _parser().parse_args(["--image", "a.png"]).image == "a.png"


def test_infer_mistakes_print_one_error_line_without_the_usage_block(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        infer_main(["--model", "m", "--images", "x.png"])
    err = capsys.readouterr().err
    assert "usage:" not in err and len(err.splitlines()) == 2, err
    # --images is no longer read as --images-dir (which then said "no such folder: x.png")
    assert "one of the arguments --image --images-dir --jsonl is required" in err and "infer --help" in err
