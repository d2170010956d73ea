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


def test_infer_input_paths_say_what_they_are_before_the_model_loads(tmp_path, capsys) -> None:  # noqa: ANN001
    """A file given as a folder (and back) says so; an image folder without images stops before loading."""
    (tmp_path / "rows.jsonl").write_text("")
    (tmp_path / "empty").mkdir()
    cases = [
        (
            ["--images-dir", str(tmp_path / "rows.jsonl")],
            f"--images-dir {tmp_path / 'rows.jsonl'}: a file, not a folder",
        ),
        (["--jsonl", str(tmp_path)], f"--jsonl {tmp_path}: a folder, not a file"),
        (["--image", str(tmp_path / "none.png")], f"--image {tmp_path / 'none.png'}: no such file"),
        (["--images-dir", str(tmp_path / "empty")], f"--images-dir {tmp_path / 'empty'}: no images (.png"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            infer_main(["--model", str(tmp_path / "no-model"), *args])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err
