"""Tiny Qwen3.5 replica (real Qwen3_5ForConditionalGeneration + Qwen3VLProcessor, byte tokenizer).

Qwen3.5 (``model_type`` ``qwen3_5``: the dense Qwen/Qwen3.5-0.8B ... 27B) is a native VLM whose language
model is hybrid: Gated DeltaNet linear-attention layers (``linear_attn.*``) and gated full-attention layers
(``self_attn.*``, the query projection also yields an output gate), 3:1 in the real checkpoints. The vision
tower is Qwen3-VL's (patch 16, merge 2, learned position grid) without deepstack; transformers 5.23 maps
``qwen3_5`` to ``Qwen3VLProcessor`` (``processing_auto.py``), ``Qwen2VLImageProcessor`` and
``Qwen3VLVideoProcessor``.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLProcessor,
)

from vlm_lightning.replicas import common
from vlm_lightning.replicas.qwen_common import (
    QWEN_SPECIAL_TOKENS,
    qwen3_style_image_processors,
    qwen_mrope_section,
    qwen_vision_config,
    qwen_vision_token_ids,
)

# The chat template of Qwen/Qwen3.5-0.8B and Qwen/Qwen3.5-2B (``chat_template.jinja``), which this repository
# could not download: the body is the Qwen3.5 template as reproduced verbatim in public code (llama-cpp-python's
# ``Qwen35ChatHandler.CHAT_FORMAT`` with the Qwen3.5, not 3.6, history rule ``loop.index0 >
# ns.last_query_index`` that ollama's tests quote as the Qwen3.5 GGUF template); the generation prompt is the
# 0.8B / 2B one, quoted from those checkpoints by several public repositories: thinking is opt-in
# (``enable_thinking=True``), so by default the prompt already holds an empty think block and ends
# ``<|im_start|>assistant\n<think>\n\n</think>\n\n``. (Qwen3.5-4B / 9B / 27B invert it: ``enable_thinking is
# defined and enable_thinking is false``, i.e. thinking by default, an open ``<think>\n`` prompt.) Assistant turns
# after the last user query render ``<think>\n{reasoning}\n</think>\n\n{content}``, earlier ones only
# ``{content}``; contents are trimmed. Tool calls use Qwen3.5's XML ``<function=...>`` format.
QWEN3_5_CHAT_TEMPLATE = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count, is_system_content=false) %}
    {%- if content is string %}
        {{- content }}
    {%- elif content is iterable and content is not mapping %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if is_system_content %}
                    {{- raise_exception('System message cannot contain images.') }}
                {%- endif %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Picture ' ~ image_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if is_system_content %}
                    {{- raise_exception('System message cannot contain videos.') }}
                {%- endif %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Video ' ~ video_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- else %}
                {{- raise_exception('Unexpected item type in content.') }}
            {%- endif %}
        {%- endfor %}
    {%- elif content is none or content is undefined %}
        {{- '' }}
    {%- else %}
        {{- raise_exception('Unexpected content type.') }}
    {%- endif %}
{%- endmacro %}
{%- if not messages %}
    {{- raise_exception('No messages provided.') }}
{%- endif %}
{%- if tools and tools is iterable and tools is not mapping %}
    {{- '<|im_start|>system\n' }}
    {{- "# Tools\n\nYou have access to the following functions:\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>" }}
    {{- '\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>' }}
    {%- if messages[0].role == 'system' %}
        {%- set content = render_content(messages[0].content, false, true)|trim %}
        {%- if content %}
            {{- '\n\n' + content }}
        {%- endif %}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {%- set content = render_content(messages[0].content, false, true)|trim %}
        {{- '<|im_start|>system\n' + content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set content = render_content(message.content, false)|trim %}
        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if ns.multi_step_tool %}
    {{- raise_exception('No user query found in messages.') }}
{%- endif %}
{%- for message in messages %}
    {%- set content = render_content(message.content, true)|trim %}
    {%- if message.role == "system" %}
        {%- if not loop.first %}
            {{- raise_exception('System message must be at the beginning.') }}
        {%- endif %}
    {%- elif message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- set reasoning_content = reasoning_content|trim %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content + '\n</think>\n\n' + content }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls and message.tool_calls is iterable and message.tool_calls is not mapping %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {%- if loop.first %}
                    {%- if content|trim %}
                        {{- '\n\n<tool_call>\n<function=' + tool_call.name + '>\n' }}
                    {%- else %}
                        {{- '<tool_call>\n<function=' + tool_call.name + '>\n' }}
                    {%- endif %}
                {%- else %}
                    {{- '\n<tool_call>\n<function=' + tool_call.name + '>\n' }}
                {%- endif %}
                {%- if tool_call.arguments is defined %}
                    {%- for args_name, args_value in tool_call.arguments|items %}
                        {{- '<parameter=' + args_name + '>\n' }}
                        {%- set args_value = args_value | string if args_value is string else args_value | tojson | safe %}
                        {{- args_value }}
                        {{- '\n</parameter>\n' }}
                    {%- endfor %}
                {%- endif %}
                {{- '</function>\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if not loop.last and loop.nextitem.role != "tool" %}
            {{- '<|im_end|>\n' }}
        {%- elif loop.last %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Unexpected message role.') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is true %}
        {{- '<think>\n' }}
    {%- else %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

#: ``<think>`` / ``</think>`` are single added tokens of the real vocabulary (not special: decoding keeps them).
QWEN3_5_THINK_TOKENS = ["<think>", "</think>"]


def _layer_types(layers: int) -> list[str]:
    """The real 3:1 pattern (every fourth layer full attention), with the last layer always full attention."""
    return [
        "full_attention" if (i + 1) % 4 == 0 or i == layers - 1 else "linear_attention" for i in range(layers)
    ]


def build_qwen3_5(out_dir: Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Tiny Qwen3.5: real Qwen3_5ForConditionalGeneration + Qwen3VLProcessor, byte tokenizer.

    Two layers: one Gated DeltaNet block then one gated full-attention block (both kinds present). Full
    attention: 4 query / 2 key-value heads of 32, partial rotary 0.25 (8 rotary dims, interleaved M-RoPE
    section [2, 1, 1]). Linear attention: 2 key / 4 value heads of 16, conv kernel 4. Vision: one block,
    patch 16, merge 2 (32 px per image token), 4..64 image tokens, mean/std 0.5 as in the real processor.
    """

    tokenizer = common.byte_level_tokenizer(
        QWEN_SPECIAL_TOKENS, eos="<|im_end|>", pad="<|endoftext|>", chat_template=QWEN3_5_CHAT_TEMPLATE
    )
    tokenizer.add_tokens(QWEN3_5_THINK_TOKENS)
    ids = common.token_ids(tokenizer, QWEN_SPECIAL_TOKENS)
    head_dim = 32
    partial_rotary = 0.25
    config = Qwen3_5Config(
        text_config=common.tiny_text_config(
            common.padded_vocab_size(tokenizer),
            hidden_size,
            layers,
            layer_types=_layer_types(layers),
            head_dim=head_dim,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=4,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000000.0,
                "partial_rotary_factor": partial_rotary,
                "mrope_section": qwen_mrope_section(int(head_dim * partial_rotary)),
                "mrope_interleaved": True,
            },
            pad_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
        ),
        vision_config=qwen_vision_config(hidden_size, patch_size=16, num_position_embeddings=64),
        **qwen_vision_token_ids(ids),
        tie_word_embeddings=False,
    )
    model = common.random_model(Qwen3_5ForConditionalGeneration, config, seed=seed)
    common.set_generation_ids(
        model, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"], bos=ids["<|endoftext|>"]
    )
    size = {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}
    processor = Qwen3VLProcessor(
        tokenizer=tokenizer, chat_template=QWEN3_5_CHAT_TEMPLATE, **qwen3_style_image_processors(size)
    )
    return common.save_replica(model, processor, out_dir)
