"""Strategy settings refused before work starts, and the evaluation shards sharded ranks step through together."""

from __future__ import annotations

import dataclasses

import pytest

from vlm_lightning.data.datamodule import RecordDataset
from vlm_lightning.data.records import Record
from vlm_lightning.data.sampling import FILLER, EvenShardSampler
from vlm_lightning.errors import SettingError
from vlm_lightning.training.sharding import FSDP2Strategy, check_strategy, resolve_strategy


@pytest.mark.parametrize(
    ("strategy", "mode", "message"),
    [
        ("fsdp", "qlora", "cannot run model.mode qlora"),
        ({"class_path": "vlm_lightning.training.sharding.FSDP2Strategy"}, "qlora", "4-bit"),
        ("deepspeed_stage_3", "lora", "DeepSpeed is not supported"),
        ({"class_path": "lightning.pytorch.strategies.DeepSpeedStrategy"}, "full", "DeepSpeed"),
        (
            {"class_path": "lightning.pytorch.strategies.FSDPStrategy"},
            "lora",
            "FSDP1 strategy is not supported",
        ),
    ],
)
def test_strategies_that_cannot_work_are_refused(strategy, mode: str, message: str) -> None:  # noqa: ANN001
    with pytest.raises(SettingError, match=message):
        check_strategy(strategy, mode)


@pytest.mark.parametrize("strategy", ["auto", "ddp", "fsdp", "fsdp2", None])
def test_working_combinations_pass(strategy) -> None:  # noqa: ANN001
    check_strategy(strategy, "lora")
    check_strategy(strategy, "full")
    if strategy in ("auto", "ddp", None):
        check_strategy(strategy, "qlora")


def test_cpu_offload_needs_cuda() -> None:
    with pytest.raises(SettingError, match="needs a CUDA GPU"):
        check_strategy("fsdp_cpu_offload", "full", "cpu")
    with pytest.raises(SettingError, match="needs a CUDA GPU"):
        check_strategy(
            {
                "class_path": "vlm_lightning.training.sharding.FSDP2Strategy",
                "init_args": {"cpu_offload": True},
            },
            "full",
            "cpu",
        )
    check_strategy("fsdp", "full", "cpu")


def test_fsdp_names_become_fsdp2() -> None:
    assert isinstance(resolve_strategy("fsdp"), FSDP2Strategy)
    offload = resolve_strategy("fsdp_cpu_offload")
    assert isinstance(offload, FSDP2Strategy) and offload.cpu_offload
    assert resolve_strategy("ddp") == "ddp"


@pytest.mark.parametrize(("size", "world"), [(5, 2), (4, 2), (1, 3), (7, 4), (0, 2)])
def test_even_shards_cover_every_sample_once_plus_fillers(size: int, world: int) -> None:
    shards = [list(EvenShardSampler(size, world, rank)) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank the same number of samples
    real = sorted(i for s in shards for i in s if i >= 0)
    assert real == list(range(size))  # each exactly once
    fillers = [i for s in shards for i in s if i < 0]
    assert len(fillers) == world * -(-size // world) - size
    assert all(0 <= -1 - i < max(size, 1) for i in fillers)
    assert all(
        s[-len([i for i in s if i < 0]) :] == [i for i in s if i < 0] for s in shards if any(i < 0 for i in s)
    )


def test_a_filler_is_its_sample_marked(tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "white").save(image)
    record = Record(
        "a", [str(image)], [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}], ["x"]
    )
    dataset = RecordDataset([record])
    real, filler = dataset[0], dataset[-1]
    assert not real[0].meta.get(FILLER) and filler[0].meta[FILLER] is True
    assert filler[0].id == "a" and filler[1][0].size == real[1][0].size
    assert FILLER not in record.meta  # the stored record is untouched


@pytest.mark.parametrize("family", ["qwen2_vl", "paligemma"])
def test_the_collators_give_a_filler_no_labels(family: str, tiny_replica, tmp_path) -> None:  # noqa: ANN001
    from PIL import Image

    from vlm_lightning.models.loading import family_of, load_processor, make_collator

    path = str(tiny_replica(family))
    collator = make_collator(load_processor(path, image_max_tokens=16), family_of(path), max_length=300)
    image = Image.new("RGB", (32, 32), "white")
    records = [
        Record(
            str(i),
            ["x"],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "an answer"}],
            ["an answer"],
        )
        for i in range(2)
    ]
    records[1] = dataclasses.replace(records[1], meta={FILLER: True})
    labels = collator([(r, [image]) for r in records])["labels"]
    assert (labels[0] != -100).any()  # the real sample learns its answer
    assert (labels[1] == -100).all()  # the filler: no loss, whatever the strategy
