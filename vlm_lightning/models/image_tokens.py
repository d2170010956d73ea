"""Image-token budgets through each family's own processor knobs (``data.image_max_tokens`` / ``image_min_tokens``).

Each function takes ``(processor, min_tokens, max_tokens)`` and sets the knobs of one processor family so that
an image gets at most ``max_tokens`` tokens (and, where the processor can, at least ``min_tokens``); a budget the
processor cannot give raises ``ValueError`` (turned into a setting error by ``models.loading``). A family names
its function in ``FamilyFacts.set_image_tokens``.
"""

from __future__ import annotations

import math
from typing import Any


def _refuse_minimum(min_tokens: int | None, why: str) -> None:
    """A processor without a knob for a minimum: a set ``image_min_tokens`` is an error, not ignored."""
    if min_tokens is not None:
        raise ValueError(
            f"image_min_tokens={min_tokens} cannot be honoured: {why}; remove data.image_min_tokens "
            "(data.image_max_tokens sets the budget)"
        )


def set_qwen_pixels(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """Qwen2/2.5/3-VL: image tokens = pixels / (patch_size * merge_size)^2 (28 px per token, 32 for Qwen3-VL).

    Only ``size`` is set: ``min_pixels``/``max_pixels`` attributes would be passed to every call as the
    deprecated kwargs (a FutureWarning in transformers 5.23, slated for removal).
    """
    ip = processor.image_processor
    unit = (ip.patch_size * ip.merge_size) ** 2
    size = dict(ip.size or {})
    if min_tokens is not None:
        size["shortest_edge"] = int(min_tokens) * unit
    if max_tokens is not None:
        size["longest_edge"] = int(max_tokens) * unit
    for stale in ("min_pixels", "max_pixels"):
        ip.__dict__.pop(stale, None)
    ip.size = size


def set_lfm2_tokens(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """LFM2-VL: bounds on the tokens of one unsplit image (and of the thumbnail of a split one).

    With ``do_image_splitting`` an image larger than ``max_image_tokens`` (times ``max_pixels_tolerance``)
    is cut into ``min_tiles..max_tiles`` tiles of ``(tile_size / patch / downsample)^2`` tokens each, plus a
    thumbnail of at most ``max_image_tokens``: the total can exceed ``max_tokens``.
    """
    ip = processor.image_processor
    if min_tokens is not None:
        ip.min_image_tokens = int(min_tokens)
    if max_tokens is not None:
        ip.max_image_tokens = int(max_tokens)
    tile_patches = (ip.tile_size // ip.encoder_patch_size) ** 2 if ip.do_image_splitting else 0
    ip.max_num_patches = max(ip.max_image_tokens * ip.downsample_factor**2, tile_patches)


def set_idefics3_tiles(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """Idefics3 / SmolVLM: tokens = tiles x ``image_seq_len``; tiles = local grid + 1 global image.

    The image's longest edge is resized (up or down) to ``size["longest_edge"]``, then cut into tiles of
    ``max_image_size["longest_edge"]``. ``max_tokens`` picks the largest k with k*k + 1 tiles (a square
    image, the worst case) within budget and sets the longest edge to k tiles; below two tiles' worth,
    splitting is switched off (one tile). ``min_tokens`` has no knob (every image is rescaled to the
    same longest edge): setting it is an error.
    """
    _refuse_minimum(min_tokens, "Idefics3 / SmolVLM rescale every image to the same longest edge")
    if max_tokens is None:
        return
    ip = processor.image_processor
    per_tile = int(processor.image_seq_len)
    tile = int(ip.max_image_size["longest_edge"])
    tiles = int(max_tokens) // per_tile
    if tiles < 1:
        raise ValueError(
            f"max image tokens {max_tokens} is below one tile ({per_tile} tokens) for this processor"
        )
    k = math.isqrt(tiles - 1) if tiles > 1 else 0
    if k < 1:
        ip.do_image_splitting = False
        ip.size = {"longest_edge": tile}
    else:
        ip.do_image_splitting = True
        ip.size = {"longest_edge": k * tile}


def set_internvl_tiles(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """InternVL (GotOcr2ImageProcessor): tokens = tiles x ``image_seq_length`` (256 for 448 px tiles).

    An image is cut into a grid of ``min_patches..max_patches`` tiles (the aspect ratio closest to the
    image's), plus a thumbnail tile when the grid has more than one. ``max_tokens`` allows
    ``max_tokens // image_seq_length`` tiles: ``max_patches`` is that minus the thumbnail, or 1 (one tile,
    no thumbnail) when fewer than three fit. ``min_tokens`` sets ``min_patches`` the same way, capped at
    ``max_patches``.
    """
    _set_tile_range(processor.image_processor, int(processor.image_seq_length), min_tokens, max_tokens)


def _set_tile_range(ip: Any, per_tile: int, min_tokens: int | None, max_tokens: int | None) -> None:
    """``min_patches`` / ``max_patches`` of a tiler that adds a thumbnail to grids of two tiles or more
    (InternVL, GraniteDocling): ``max_tokens // per_tile`` tiles allowed, ``max_patches`` that minus the
    thumbnail, or 1 when fewer than three fit; ``min_patches`` likewise, capped at ``max_patches``."""
    if max_tokens is not None:
        tiles = int(max_tokens) // per_tile
        if tiles < 1:
            raise ValueError(
                f"max image tokens {max_tokens} is below one tile ({per_tile} tokens) for this processor"
            )
        ip.max_patches = tiles - 1 if tiles >= 3 else 1
    if min_tokens is not None:
        tiles = -(-int(min_tokens) // per_tile)
        ip.min_patches = max(tiles - 1, 2) if tiles >= 2 else 1
    ip.min_patches = min(ip.min_patches, ip.max_patches)


def set_gemma3_crops(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """Gemma 3: an image and each of its pan-and-scan crops are resized to one fixed size,
    ``image_seq_length`` soft tokens each (256 on the hub checkpoints).

    ``max_tokens`` allows ``k = max_tokens // image_seq_length - 1`` crops: pan-and-scan is switched on
    with at most ``k`` crops when ``k >= 2`` (it never makes fewer than two) and off otherwise; only images
    with an aspect ratio of at least ``pan_and_scan_min_ratio_to_activate`` are cropped. Gemma3Processor
    passes its class-level ``images_kwargs`` to every call, over the image processor's saved settings, so
    they are set on the processor instance here, with the image processor's own non-null pan-and-scan
    settings (preprocessor_config.json) taking precedence over the class defaults. ``min_tokens`` has no
    knob (every image is resized to the same size): setting it is an error.
    """
    _refuse_minimum(min_tokens, "Gemma 3 resizes every image (and crop) to one fixed size")
    if max_tokens is None:
        return
    per_image = int(processor.image_seq_length)
    images = int(max_tokens) // per_image
    if images < 1:
        raise ValueError(
            f"max image tokens {max_tokens} is below one image ({per_image} tokens) for this processor"
        )
    ip = processor.image_processor
    kwargs = dict(processor.images_kwargs)
    for key in ("pan_and_scan_min_crop_size", "pan_and_scan_min_ratio_to_activate"):
        if getattr(ip, key, None) is not None:
            kwargs[key] = getattr(ip, key)
    crops = images - 1
    if getattr(ip, "pan_and_scan_max_num_crops", None) is not None:
        crops = min(crops, int(ip.pan_and_scan_max_num_crops))
    kwargs["do_pan_and_scan"] = crops >= 2
    if crops >= 2:
        kwargs["pan_and_scan_max_num_crops"] = crops
    processor.images_kwargs = kwargs


def set_granite_docling_tiles(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """GraniteDocling: tokens = tiles x ``image_seq_len`` (x4 when the image processor's ``fine_route`` is on).

    A page is cut into ``min_patches..max_patches`` square tiles on the grid nearest its aspect ratio
    (small pages are upscaled to it), plus a thumbnail tile when the grid has more than one; set as for
    InternVL: ``max_patches`` = tiles allowed minus the thumbnail, or 1 when fewer than three fit;
    ``min_patches`` likewise, capped at ``max_patches``. The "dense page" rule (``dense_max_patches``, 0 on
    the replica) is capped at ``max_patches`` so that it cannot exceed the budget.
    """
    ip = processor.image_processor
    per_tile = int(processor.image_seq_len) * (4 if getattr(ip, "fine_route", False) else 1)
    _set_tile_range(ip, per_tile, min_tokens, max_tokens)
    if max_tokens is not None and getattr(ip, "dense_max_patches", 0):
        ip.dense_max_patches = min(ip.dense_max_patches, ip.max_patches)


GEMMA4_SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)  # the only values Gemma4ImageProcessor accepts


def set_gemma4_soft_tokens(processor: Any, min_tokens: int | None, max_tokens: int | None) -> None:
    """Gemma 4: ``max_soft_tokens`` of the image processor, one of 70, 140, 280, 560, 1120 (280 on the hub).

    Each image is resized, keeping its aspect ratio, to the largest size whose sides are multiples of
    patch x pooling kernel (48 px on the hub) within ``max_soft_tokens`` x kernel^2 patches: a budget gives
    somewhat fewer tokens than its value (a 4:3 image: 63 of 70, 270 of 280). The largest budget within
    ``max_tokens`` is used; below 70 there is none: an error says so. ``min_tokens`` has no knob (every image
    is scaled up or down to fill the budget): setting it is an error.
    """
    _refuse_minimum(min_tokens, "Gemma 4 scales every image up or down to fill its soft-token budget")
    if max_tokens is None:
        return
    fitting = [b for b in GEMMA4_SOFT_TOKEN_BUDGETS if b <= int(max_tokens)]
    if not fitting:
        raise ValueError(
            f"Gemma 4 takes images at {', '.join(map(str, GEMMA4_SOFT_TOKEN_BUDGETS))} soft tokens: "
            f"image_max_tokens={max_tokens} is below the smallest; set data.image_max_tokens to 70 or more"
        )
    budget = fitting[-1]
    processor.image_processor.max_soft_tokens = budget
    processor.image_seq_length = budget
