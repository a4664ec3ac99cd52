"""The tokenizer of a GGUF export, as llama.cpp reads it: token list, types, merges, special ids, chat template.

Byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2) are written as ``gpt2``, SentencePiece-style BPE
(Llama 2, Mistral) as ``llama`` with scores, and a whole-token vocabulary (the tests' character
tokenizer) byte-level without merges, so llama.cpp splits text into the same single tokens.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from finercut_tui.errors import FinercutError


def _bytes_to_unicode() -> dict[int, str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


# llama.cpp's converter names a BPE pre-tokenizer by the sha256 of the token ids of this text
# (convert_hf_to_gguf.py, get_vocab_base_pre); the hashes of the families written here, from its table
CHKTXT = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


def _pre_tokenizer(tokenizer, config, source_model: str) -> str:
    from hashlib import sha256

    known = KNOWN_PRE.get(sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest())
    if known:
        return known
    if "smollm" in source_model.lower():
        return "smollm"
    if config.model_type == "qwen2":
        return "qwen2"
    if config.vocab_size >= 128000:
        return "llama-bpe"
    return "default"


def _word_level_tokens(data: dict, special: set[int]) -> list[str]:
    """A whole-token vocabulary, written byte-level with no merges, so llama.cpp splits text into the
    same single tokens (every token must be one byte)."""
    enc = _bytes_to_unicode()
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    by_id.update({t["id"]: t["content"] for t in data.get("added_tokens", [])})
    tokens = []
    for i in range(max(by_id) + 1):
        text = by_id.get(i, f"[UNUSED{i}]")
        raw = text.encode("utf-8")
        tokens.append("".join(enc[b] for b in raw) if i not in special and len(raw) == 1 else text)
    return tokens


def write_tokenizer(writer, tokenizer, config, source_model: str) -> None:
    """Token list, types, merges, special ids and the chat template, as llama.cpp reads them."""
    import gguf

    vocab_size = int(config.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(folder)
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        kind = data["model"]["type"]
        special = {t["id"] for t in data.get("added_tokens", []) if t.get("special")}
        if kind == "BPE" and not data["model"].get("byte_fallback", False):
            vocab = gguf.BpeVocab(folder)
            tokens = [t for t, _, _ in vocab.all_tokens()]
            types = [
                gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))
            ]
            model, scores, merges = "gpt2", None, True
        elif kind == "BPE":
            vocab = gguf.LlamaHfVocab(folder)
            entries = list(vocab.all_tokens())
            tokens = [t for t, _, _ in entries]
            scores = [s for _, s, _ in entries]
            types = [t for _, _, t in entries]
            model, merges = "llama", False
        elif kind == "WordLevel":
            tokens = _word_level_tokens(data, special)
            types = [
                gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))
            ]
            model, scores, merges = "gpt2", None, False
        else:
            raise FinercutError(f"a {kind} tokenizer cannot be written to GGUF here: use --format finercut")
        tokens = [t.decode("utf-8") if isinstance(t, bytes) else t for t in tokens]
        for i in range(len(tokens), vocab_size):  # embedding rows without a token
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            if scores is not None:
                scores.append(-1000.0)
        tokens, types = tokens[:vocab_size], types[:vocab_size]
        writer.add_tokenizer_model(model)
        writer.add_tokenizer_pre(
            _pre_tokenizer(tokenizer, config, source_model) if model == "gpt2" else "default"
        )
        writer.add_token_list(tokens)
        writer.add_token_types([int(t) for t in types])
        if scores is not None:
            writer.add_token_scores(scores[:vocab_size])
        special_vocab = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=vocab_size)
        if model == "gpt2" and not special_vocab.merges:
            special_vocab.merges = ["\u00ff \u00ff"]  # llama.cpp needs the key; ÿÿ never occurs in the vocab
        special_vocab.add_to_gguf(writer, quiet=True)
