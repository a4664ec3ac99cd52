"""The calibration layouts `finercut` and `llm-drop`, token by token, against expectations built by hand.

The tiny tokenizer is one id per character (printable ASCII c -> 4 + ord(c) - 32, "\\n" -> 99), BOS 1,
EOS 2; with add_bos=True it puts BOS in front of encoded text, never EOS.
"""

import json
import sys

import pytest
from tiny_tokenizer import tiny_tokenizer
from tokenizers import processors

from finercut_tui.data.calibration import DEFAULT_LAYOUT, LAYOUTS, build_calibration, check_layout
from finercut_tui.data.sources import load_text
from finercut_tui.errors import FinercutError

BOS, EOS = 1, 2


def ids(text):
    return [99 if c == "\n" else 4 + ord(c) - 32 for c in text]


def rows_of(stream, samples, seq_len):
    return [stream[i * seq_len : (i + 1) * seq_len] for i in range(samples)]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return str(path)


def bos_and_eos_tokenizer():
    """Like the tiny tokenizer, but encodes as <s> text </s> (as some tokenizers add EOS too)."""
    tok = tiny_tokenizer(add_bos=True)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    return tok


# ---- finercut: empty rows dropped, rows joined by " ", one tokenization with special tokens


@pytest.mark.parametrize("add_bos", [True, False])
def test_finercut_txt_one_bos_then_consecutive_rows(tmp_path, add_bos):
    path = tmp_path / "calib.txt"
    path.write_text("ab cd\n\nefg\n  \nhij\nklm\n")  # lines: "ab cd", "", "efg", "  ", "hij", "klm"
    stream = ([BOS] if add_bos else []) + ids("ab cd efg    hij klm")  # only "" is dropped
    cal = build_calibration(tiny_tokenizer(add_bos), str(path), samples=3, seq_len=6, layout="finercut")
    assert cal.input_ids.tolist() == rows_of(stream, 3, 6)
    assert cal.input_ids.shape == (3, 6)
    assert cal.bos is add_bos and cal.layout == "finercut"
    assert (cal.input_ids[1:] != BOS).all()  # no BOS but the first


@pytest.mark.parametrize("add_bos", [True, False])
def test_finercut_jsonl_text_fields_are_rows_verbatim(tmp_path, add_bos):
    path = write_jsonl(tmp_path / "calib.jsonl", [" = Title = \n", "", " Body one .\n", "two\n"])
    stream = ([BOS] if add_bos else []) + ids(" = Title = \n  Body one .\n two\n")
    cal = build_calibration(tiny_tokenizer(add_bos), path, samples=2, seq_len=12, layout="finercut")
    assert cal.input_ids.tolist() == rows_of(stream, 2, 12)


def test_finercut_keeps_a_special_token_appended_at_the_very_end(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("abc\ndef\n")
    cal = build_calibration(bos_and_eos_tokenizer(), str(path), samples=3, seq_len=3, layout="finercut")
    assert cal.input_ids.tolist() == rows_of([BOS] + ids("abc def") + [EOS], 3, 3)


def test_finercut_tokenizes_a_prefix_only_and_equals_the_whole_string(tmp_path):
    lines = [f"line {i} of the calibration text, {'x' * (i % 17)}" for i in range(6000)]
    lines[3::7] = [""] * len(lines[3::7])
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    tok = Counting(bos_and_eos_tokenizer())
    cal = build_calibration(tok, str(path), samples=20, seq_len=256, layout="finercut")
    whole = bos_and_eos_tokenizer()(" ".join(line for line in lines if line))["input_ids"]
    assert cal.input_ids.flatten().tolist() == whole[: 20 * 256]
    assert tok.chars < len(" ".join(lines)) / 2  # a prefix, not the whole text


# ---- llm-drop: each row + EOS, no BOS, concatenated, consecutive blocks, remainder dropped


@pytest.mark.parametrize("add_bos", [True, False])
def test_llm_drop_txt_lines_are_documents(tmp_path, add_bos):
    path = tmp_path / "calib.txt"
    path.write_bytes(b"ab\r\n\r\ncd e\nfg\nhi")  # lines "ab", "", "cd e", "fg", "hi" (no final newline)
    stream = ids("ab") + [EOS] + ids("cd e") + [EOS] + ids("fg") + [EOS] + ids("hi") + [EOS]  # 14 ids
    cal = build_calibration(tiny_tokenizer(add_bos), str(path), samples=3, seq_len=4, layout="llm-drop")
    assert cal.input_ids.tolist() == rows_of(stream, 3, 4)  # the last 2 ids are the dropped remainder
    assert cal.bos is False and cal.layout == "llm-drop"


@pytest.mark.parametrize("add_bos", [True, False])
def test_llm_drop_jsonl_text_fields_are_documents(tmp_path, add_bos):
    path = write_jsonl(tmp_path / "calib.jsonl", ["x y", "", "z\n", "long document"])
    stream = ids("x y") + [EOS] + ids("z\n") + [EOS] + ids("long document") + [EOS]
    cal = build_calibration(tiny_tokenizer(add_bos), path, samples=2, seq_len=9, layout="llm-drop")
    assert cal.input_ids.tolist() == rows_of(stream, 2, 9)


def test_llm_drop_adds_neither_bos_nor_a_second_eos(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("abc\nde\n")
    cal = build_calibration(bos_and_eos_tokenizer(), str(path), samples=1, seq_len=7, layout="llm-drop")
    assert cal.input_ids.tolist() == [ids("abc") + [EOS] + ids("de") + [EOS]]


def test_llm_drop_tokenizes_only_the_documents_it_needs(tmp_path):
    docs = [f"document number {i} " * (1 + i % 5) for i in range(3000)]
    path = write_jsonl(tmp_path / "big.jsonl", docs)
    tok = Counting(tiny_tokenizer())
    cal = build_calibration(tok, path, samples=8, seq_len=128, layout="llm-drop")
    stream = [t for doc in docs for t in ids(doc) + [EOS]]
    assert cal.input_ids.tolist() == rows_of(stream, 8, 128)
    assert tok.chars < sum(map(len, docs)) / 10


# ---- named corpora: which rows they give


def test_txt_rows_are_lines_without_breaks_as_datasets_text_gives_them(tmp_path):
    path = tmp_path / "a.txt"
    for raw, rows in [(b"a\r\n\nb \n", ("a", "", "b ")), (b"a\n\n", ("a", "")), (b"x", ("x",)), (b"", ())]:
        path.write_bytes(raw)
        text = load_text(str(path))
        assert text.rows == rows and text.text == raw.decode().replace("\r\n", "\n")


def test_pydoc_rows_are_topics(monkeypatch):
    from pydoc_data.topics import topics

    names = sorted(topics)[: len(topics) // 2]
    text = load_text("pydoc")
    assert text.rows == tuple(topics[name] for name in names)
    assert text.text == "\n\n".join(text.rows)  # the joined text (and its hash) is unchanged
    cal = build_calibration(tiny_tokenizer(False), "pydoc", samples=2, seq_len=64, layout="llm-drop")
    first = topics[names[0]]
    assert len(first) > 200 and first.isascii()
    assert cal.input_ids.flatten().tolist() == ids(first[:128])


class FakeDatasets:
    def __init__(self, rows):
        self.rows, self.calls = rows, []

    def load_dataset(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return {"text": self.rows}


WIKITEXT_ROWS = ["", " = Valkyria = \n", "", " Senjo no Valkyria 3 .\n", "", " = = Gameplay = = \n"]


@pytest.mark.parametrize("add_bos", [True, False])
def test_wikitext2_rows_are_the_datasets_lines(monkeypatch, add_bos):
    fake = FakeDatasets(WIKITEXT_ROWS)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    text = load_text("wikitext2")
    assert text.rows == tuple(WIKITEXT_ROWS) and text.text == "\n\n".join(WIKITEXT_ROWS)
    cal = build_calibration(tiny_tokenizer(add_bos), "wikitext2", samples=4, seq_len=12, layout="finercut")
    joined = " = Valkyria = \n  Senjo no Valkyria 3 .\n  = = Gameplay = = \n"  # FinerCut's datastring
    assert cal.input_ids.tolist() == rows_of(([BOS] if add_bos else []) + ids(joined), 4, 12)
    assert fake.calls[-1][0] == ("wikitext", "wikitext-2-raw-v1") and fake.calls[-1][1]["split"] == "train"


def test_c4_rows_are_documents(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets(["first doc.", "second doc."]))
    cal = build_calibration(tiny_tokenizer(True), "c4", samples=2, seq_len=11, layout="llm-drop")
    assert cal.input_ids.tolist() == [ids("first doc.") + [EOS], ids("second doc.")]
    assert cal.split == "validation"


# ---- the record, the default, the errors


def test_default_layout_is_per_row_bos_and_is_not_recorded(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    default = build_calibration(tiny_tokenizer(), str(path), samples=2, seq_len=10)
    explicit = build_calibration(tiny_tokenizer(), str(path), samples=2, seq_len=10, layout="per-row-bos")
    assert LAYOUTS[0] == DEFAULT_LAYOUT == default.layout == "per-row-bos"
    assert default.record().to_dict() == explicit.record().to_dict()
    assert list(default.record().to_dict()) == [
        "source", "split", "samples", "seq_len", "bos", "fingerprint", "text_sha256",
    ]  # fmt: skip
    other = build_calibration(tiny_tokenizer(), str(path), samples=2, seq_len=10, layout="finercut")
    assert other.record().to_dict()["layout"] == "finercut"
    assert (
        other.record().to_dict()["text_sha256"] == default.record().to_dict()["text_sha256"]
    )  # the same text
    assert other.fingerprint != default.fingerprint  # but other tokens


def test_unknown_layout_lists_the_valid_ones(tmp_path):
    with pytest.raises(FinercutError, match=r"^unknown calibration layout 'stream': use one of "
                       r"per-row-bos, finercut, llm-drop$"):  # fmt: skip
        build_calibration(tiny_tokenizer(), str(tmp_path / "never-read.txt"), layout="stream")
    assert check_layout("llm-drop") == "llm-drop"


@pytest.mark.parametrize(
    "layout,have",
    [("finercut", 11), ("llm-drop", 11)],  # BOS + "short text"; "short" + EOS + "text" + EOS
)
def test_too_little_text_says_how_many_tokens(tmp_path, layout, have):
    path = tmp_path / "short.txt"
    path.write_text("short\ntext\n")
    msg = (
        rf"^too little calibration text: it has {have} tokens in the {layout} layout, 2 samples x 8 need 16;"
    )
    with pytest.raises(FinercutError, match=msg):
        build_calibration(tiny_tokenizer(), str(path), samples=2, seq_len=8, layout=layout)


class Counting:
    """A tokenizer that counts the characters it was asked to encode."""

    def __init__(self, tok):
        self.tok, self.chars = tok, 0

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, text, **kwargs):
        self.chars += len(text) if isinstance(text, str) else sum(map(len, text))
        return self.tok(text, **kwargs)
