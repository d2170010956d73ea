"""LFM2's and LFM3's short convolutions in packed rows (``patches/lfm2_packed_conv.py``): the bound forward
equals the library's forward of each sample alone (LFM3: 7 taps, samples shorter than a tap window)."""

from __future__ import annotations

import torch
from transformers import Lfm2Config, Lfm3Config
from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv
from transformers.models.lfm3.modeling_lfm3 import Lfm3ShortConv

from vlm_lightning.patches.lfm2_packed_conv import _segment_causal_conv, bind_lfm2_packed_conv

LENGTHS = [9, 2, 1, 3, 11, 4]  # samples shorter than the 6 taps back, several inside one tap window


def _seq_idx(lengths: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), k, dtype=torch.int32) for k, n in enumerate(lengths)])[None]


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    config = Lfm3Config(hidden_size=16, layer_types=["conv"], num_hidden_layers=1)
    library = Lfm3ShortConv(config, layer_idx=0)
    patched = Lfm3ShortConv(config, layer_idx=0)
    patched.load_state_dict(library.state_dict())
    assert bind_lfm2_packed_conv(torch.nn.Sequential(patched)) == 1
    return library, patched


def test_segment_conv_is_the_library_conv_of_each_sample_bit_for_bit() -> None:
    torch.manual_seed(0)
    x, weight, bias = torch.randn(1, 64, sum(LENGTHS)) * 900, torch.randn(64, 7), torch.randn(64)
    packed = _segment_causal_conv(x, weight, bias, _seq_idx(LENGTHS))
    alone = [
        torch.nn.functional.conv1d(part, weight.unsqueeze(1), bias, padding=6, groups=64)[
            ..., : part.shape[-1]
        ]
        for part in x.split(LENGTHS, dim=-1)
    ]
    assert torch.equal(packed, torch.cat(alone, dim=-1))  # the same arithmetic, not just close (CPU)


def test_lfm3_short_conv_patch_equals_each_sample_alone_even_for_short_samples() -> None:
    library, patched = _pair()
    assert library.conv_kernel_size == 7
    hidden = torch.randn(1, sum(LENGTHS), 16)
    torch.testing.assert_close(patched(hidden), library(hidden), rtol=0, atol=0)  # no seq_idx: the library
    packed = patched(hidden, seq_idx=_seq_idx(LENGTHS))
    alone = torch.cat([library(part) for part in hidden.split(LENGTHS, dim=1)], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-6)  # in/out projections: other GEMM shapes
    assert not torch.allclose(library(hidden)[:, 9:12], alone[:, 9:12])  # the unpatched conv leaks


def test_lfm3_short_conv_patch_gradients_equal_each_sample_alone() -> None:
    library, patched = _pair()
    lengths = [8, 5, 10]
    hidden = torch.randn(1, sum(lengths), 16)
    patched(hidden, seq_idx=_seq_idx(lengths)).pow(2).sum().backward()
    sum(library(part).pow(2).sum() for part in hidden.split(lengths, dim=1)).backward()
    for (name, a), b in zip(patched.named_parameters(), library.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_lfm2_short_conv_patch_matches_the_library_and_respects_boundaries() -> None:
    torch.manual_seed(0)
    config = Lfm2Config(hidden_size=16, conv_L_cache=3, layer_types=["conv"], num_hidden_layers=1)
    library = Lfm2ShortConv(config, layer_idx=0)
    patched = Lfm2ShortConv(config, layer_idx=0)
    patched.load_state_dict(library.state_dict())
    assert bind_lfm2_packed_conv(torch.nn.Sequential(patched)) == 1  # the upstream class is still found
    hidden = torch.randn(1, 9, 16)
    torch.testing.assert_close(patched(hidden), library(hidden))  # no seq_idx: the library's own forward
    one_segment = torch.zeros(1, 9, dtype=torch.int32)
    torch.testing.assert_close(patched(hidden, seq_idx=one_segment), library(hidden), rtol=1e-6, atol=1e-6)
    seq_idx = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.int32)
    packed = patched(hidden, seq_idx=seq_idx)
    alone = torch.cat([library(hidden[:, :4]), library(hidden[:, 4:])], dim=1)
    torch.testing.assert_close(packed, alone, rtol=1e-6, atol=1e-6)  # each sample as if it were alone
    assert not torch.allclose(library(hidden)[:, 4:6], alone[:, 4:6])  # the unpatched conv leaks
