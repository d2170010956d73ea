"""Every swap of another library's attribute, in one table (``PATCHES``), applied at a few documented moments.

A patch replaces the behaviour of a transformers / PEFT / torch / stdlib / captcha attribute for our needs
(no host syncs, packed rows, less memory, faster decoding, seeded captchas). Each lives in one module of this
package and is listed in ``PATCHES`` with the upstream attribute it replaces, the parameter names our code was
written against, the moment it is applied and the test showing that the patched path gives the unpatched
result. ``tests/patches/test_upstream_targets.py`` imports every target and checks its signature, so an
upgrade of a library that renames or changes a patched method fails in CI instead of silently taking the
library's path (or ours on changed semantics); ``tests/patches/test_swaps_are_registered.py`` fails on a
``types.MethodType``, a ``.forward =``, a ``setattr`` or an assignment to a library's attribute outside this
package (a short allow-list names what is not a library patch).

Moments (``MOMENTS``), and how each patch is undone:

* **model build** -- ``models/build.py: build_model`` (training, export and inference all build there): bound
  on that model instance only, never undone; a model built elsewhere is the library's.
* **configure_model** -- ``training/module.py: VLMFineTuner.configure_model`` under ``*-mixed`` precision,
  once per model; never undone.
* **each loss computation** -- ``training/loss.py: causal_lm_loss`` with a fusable frozen head (training,
  validation and test steps): a with-block around one forward.
* **each generate call** -- ``generation.py: generate_batch``: a with-block around ``model.generate``.
* **each drawn captcha** -- ``data/synthetic/captchas.py: render_captcha``: a with-block, under a lock.
* **HostSyncReport's recorded steps** -- ``callbacks/host_syncs.py`` (an opt-in callback): from
  ``on_train_batch_start`` of its first recorded step to ``on_train_batch_end`` of its last (or the end of
  training, or an exception); the one patch that spans hooks (no Lightning hook encloses a whole step).

Process-wide settings changed at run time that are not patches of a library method (listed so that nothing
changes unannounced):

* ``torch._dynamo.config.recompile_limit`` / ``cache_size_limit`` raised to 8 x the compiled layer count
  (``models/acceleration.py: compile_layers``: regional compilation compiles our model's own layers'
  ``forward``, the same computation; never lowered).
* inductor's ``pre_grad_custom_pass`` for our compiled decoder layers only, as a ``torch.compile`` option (not a
  process-wide setting): ``models/adapter_fusion.py`` rewrites those layers' graphs (the LoRA A projections of one
  input as one GEMM; ``model.fuse_adapter_inputs: false`` leaves it out).
* ``torch._functorch.config.activation_memory_budget = 0.0`` when compiled layers recompute activations
  (``compile_decoder_layers(recompute_activations=True)``, i.e. compilation with gradient checkpointing;
  never restored).
* ``torch.cuda.set_sync_debug_mode("warn")`` during HostSyncReport's recorded steps (back to ``"default"``).
* ``warnings`` filters and a filter on Lightning's rank-zero loggers: ``cli/library_noise.py:
  quiet_libraries`` at CLI start, the one table of silenced library messages. Elsewhere only scoped
  ``with warnings.catch_warnings()`` blocks filter a message (``callbacks/run_log.py``,
  ``callbacks/checkpoint.py``), each with its reason.

Adding a patch: a module here (the replacement, and the function applying it at one of the moments above),
an ``UpstreamPatch`` row below, and a test in ``tests/patches/`` that the patched path gives the library's
result (named in the row). This package imports no other ``vlm_lightning`` module, and this file imports
none of its modules (``applied_by`` is a dotted name): importing a patch costs no torch import elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

#: moment -> where it happens (the module docstring says how each is undone)
MOMENTS: dict[str, str] = {
    "model build": "vlm_lightning/models/build.py",
    "configure_model": "vlm_lightning/training/module.py",
    "each loss computation": "vlm_lightning/training/loss.py",
    "each generate call": "vlm_lightning/generation.py",
    "each drawn captcha": "vlm_lightning/data/synthetic/captchas.py",
    "HostSyncReport's recorded steps": "vlm_lightning/callbacks/host_syncs.py",
}


@dataclass(frozen=True)
class UpstreamPatch:
    """One swap of a library attribute.

    Attributes:
        name: a short unique name.
        target: the dotted path of the upstream attribute whose behaviour is replaced
            (``package.module.Class.method``, or ``package.module.attribute``).
        parameters: the target's parameter names (``inspect.signature``, ``*args`` as ``args``) that our
            replacement was written against; None for a target that is not called (a module attribute).
        moment: a key of ``MOMENTS``.
        applied_by: the dotted path of our function (or method) that applies the patch.
        applied_in: the file (from the repository root) that names ``applied_by`` at that moment.
        why: what the patch is for.
        equivalence_test: ``tests/...py::test_name``: the patched path gives the unpatched result.
        upstream_reads: names our replacement relies on that must still appear in the source of the
            target's owner (its class, or its module).
        also_calls: other upstream callables our code calls, as (dotted path, parameter names).
    """

    name: str
    target: str
    parameters: tuple[str, ...] | None
    moment: str
    applied_by: str
    applied_in: str
    why: str
    equivalence_test: str
    upstream_reads: tuple[str, ...] = ()
    also_calls: tuple[tuple[str, tuple[str, ...]], ...] = ()


_HERE = "vlm_lightning.patches"

PATCHES: tuple[UpstreamPatch, ...] = (
    UpstreamPatch(
        name="lfm2_vl_image_features",
        target="transformers.models.lfm2_vl.modeling_lfm2_vl.Lfm2VlModel.get_image_features",
        parameters=("self", "pixel_values", "spatial_shapes", "pixel_attention_mask", "kwargs"),
        moment="model build",
        applied_by=f"{_HERE}.lfm2_host_shapes.bind_lfm2_vl_host_shapes",
        applied_in="vlm_lightning/models/families.py",  # FamilyFacts.bind_host_shape_methods
        why="image features cut at lengths read from the CPU spatial_shapes: no host sync per image",
        equivalence_test=(
            "tests/patches/test_lfm2_host_shapes.py::test_sync_free_lfm2_image_features_match_the_library"
        ),
        upstream_reads=("self.vision_tower", "self.multi_modal_projector"),
    ),
    UpstreamPatch(
        name="lfm2_vl_placeholder_mask",
        target="transformers.models.lfm2_vl.modeling_lfm2_vl.Lfm2VlModel.get_placeholder_mask",
        parameters=("self", "input_ids", "inputs_embeds", "image_features"),
        moment="model build",
        applied_by=f"{_HERE}.lfm2_host_shapes.bind_lfm2_vl_host_shapes",
        applied_in="vlm_lightning/models/families.py",
        why="the image-token / feature count check asserted on the device instead of on the host",
        equivalence_test=(
            "tests/patches/test_lfm2_host_shapes.py::test_device_side_placeholder_mask_equals_the_library"
        ),
        upstream_reads=("self.config.image_token_id",),
    ),
    UpstreamPatch(
        name="lfm2_short_conv_packed",
        target="transformers.models.lfm2.modeling_lfm2.Lfm2ShortConv.forward",
        parameters=("self", "hidden_states", "past_key_values", "attention_mask", "kwargs"),
        moment="model build",
        applied_by=f"{_HERE}.lfm2_packed_conv.bind_lfm2_packed_conv",
        applied_in="vlm_lightning/models/families.py",  # FamilyFacts.bind_packing_methods
        why="packed rows: the short convolution's taps do not reach into the previous sample (seq_idx)",
        equivalence_test=(
            "tests/patches/test_lfm2_packed_conv.py::"
            "test_lfm2_short_conv_patch_matches_the_library_and_respects_boundaries"
        ),
        upstream_reads=("self.in_proj", "self.conv", "self.out_proj"),
    ),
    UpstreamPatch(
        name="lfm3_short_conv_packed",
        target="transformers.models.lfm3.modeling_lfm3.Lfm3ShortConv.forward",
        parameters=("self", "hidden_states", "past_key_values", "attention_mask", "kwargs"),
        moment="model build",
        applied_by=f"{_HERE}.lfm2_packed_conv.bind_lfm2_packed_conv",
        applied_in="vlm_lightning/models/families.py",
        why="LFM3's 7-tap short convolution, the same forward: no tap reaches into another packed sample",
        equivalence_test=(
            "tests/patches/test_lfm2_packed_conv.py::"
            "test_lfm3_short_conv_patch_equals_each_sample_alone_even_for_short_samples"
        ),
        upstream_reads=("self.in_proj", "self.conv", "self.out_proj"),
    ),
    UpstreamPatch(
        name="frozen_tower_no_grad",
        # any family's vision tower class: the wrapper passes every argument through, so what it relies
        # on is that calling a module runs the instance's ``forward`` attribute
        target="torch.nn.modules.module.Module._call_impl",
        parameters=("self", "args", "kwargs"),
        moment="model build",
        applied_by=f"{_HERE}.frozen_tower.run_frozen_tower_without_autograd",
        applied_in="vlm_lightning/models/peft_setup.py",  # apply_training_mode, called by build_model
        why="a fully frozen vision tower and projector keep no autograd graph (less activation memory)",
        equivalence_test=(
            "tests/patches/test_frozen_tower.py::test_frozen_tower_under_no_grad_gives_the_same_loss_and_grads"
        ),
        upstream_reads=("self.forward",),
    ),
    UpstreamPatch(
        name="peft_lora_input_cast",
        target="peft.tuners.tuners_utils.BaseTunerLayer._cast_input_dtype",
        parameters=("self", "x", "dtype"),
        moment="configure_model",
        applied_by=f"{_HERE}.peft_lora_cast.skip_lora_input_cast",
        applied_in="vlm_lightning/training/module.py",
        why="under autocast PEFT's bf16 -> fp32 input cast only writes two activation copies per projection",
        equivalence_test=(
            "tests/patches/test_peft_lora_cast.py::"
            "test_skipping_lora_input_cast_keeps_loss_and_grads_under_bf16_autocast"
        ),
        upstream_reads=("cast_input_dtype_enabled",),
    ),
    UpstreamPatch(
        name="lm_head_bypass",
        target="torch.nn.modules.linear.Linear.forward",  # fusable_head: a plain frozen nn.Linear only
        parameters=("self", "input"),
        moment="each loss computation",
        applied_by=f"{_HERE}.lm_head_bypass.head_bypassed",
        applied_in="vlm_lightning/training/loss.py",
        why="the frozen head runs inside the chunked linear_cross_entropy: no (rows, vocab) logits kept",
        equivalence_test="tests/patches/test_lm_head_bypass.py::test_bypassed_head_hands_back_what_it_would_read",
    ),
    UpstreamPatch(
        name="merged_lora_for_generation",
        target="peft.tuners.lora.layer.Linear.forward",  # the module swapped for a merged nn.Linear
        parameters=("self", "x", "args", "kwargs"),
        moment="each generate call",
        applied_by=f"{_HERE}.merged_lora.merged_lora",
        applied_in="vlm_lightning/generation.py",
        why="decoding runs one merged linear per LoRA projection; the stored weights are never written",
        equivalence_test=(
            "tests/patches/test_merged_lora.py::test_merged_output_equals_adapter_output_and_weights_restored"
        ),
        upstream_reads=("base_layer", "active_adapters", "lora_A", "use_dora", "merged", "disable_adapters"),
        also_calls=(("peft.tuners.lora.layer.Linear.get_delta_weight", ("self", "adapter")),),
    ),
    UpstreamPatch(
        name="captcha_seeded_secrets",
        target="captcha.image.secrets",
        parameters=None,  # a module: its functions that captcha calls are checked in test_captcha_seed.py
        moment="each drawn captcha",
        applied_by=f"{_HERE}.captcha_seed.seeded_captcha_module",
        applied_in="vlm_lightning/data/synthetic/captchas.py",
        why="captcha draws from the unseedable secrets module: seeded stand-in for reproducible datasets",
        equivalence_test="tests/patches/test_captcha_seed.py::test_seeded_stand_in_keeps_the_secrets_contract",
    ),
    UpstreamPatch(
        name="host_sync_warnings",
        target="warnings.showwarning",
        parameters=("message", "category", "filename", "lineno", "file", "line"),
        moment="HostSyncReport's recorded steps",
        applied_by=f"{_HERE}.host_sync_warnings.SyncWarningRecorder.start",
        applied_in="vlm_lightning/callbacks/host_syncs.py",
        why="torch reports host syncs only as warnings: count each one, show every other warning as usual",
        equivalence_test=(
            "tests/patches/test_host_sync_warnings.py::"
            "test_other_warnings_reach_the_previous_handler_and_the_state_is_restored"
        ),
    ),
)

__all__ = ["MOMENTS", "PATCHES", "UpstreamPatch"]
