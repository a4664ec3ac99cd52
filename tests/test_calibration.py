"""Calibration sampling and fingerprint, checked by hand."""

import hashlib
import json
import struct

import pytest
from tiny_tokenizer import tiny_tokenizer

from finercut_tui.data.calibration import build_calibration
from finercut_tui.errors import FinercutError


def by_hand(tokens, samples, seq_len, bos):
    rows, pos = [], 0
    for _ in range(samples):
        take = seq_len - 1 if bos is not None else seq_len
        rows.append(([bos] if bos is not None else []) + tokens[pos : pos + take])
        pos += take
    digest = hashlib.sha256(b"".join(struct.pack("<q", t) for row in rows for t in row)).hexdigest()
    return rows, "sha256:" + digest


@pytest.mark.parametrize("add_bos", [True, False])
def test_samples_and_fingerprint_by_hand(tmp_path, add_bos):
    text = "The quick brown fox jumps over the lazy dog. " * 20
    path = tmp_path / "calib.txt"
    path.write_text(text)
    tok = tiny_tokenizer(add_bos=add_bos)
    cal = build_calibration(tok, str(path), samples=3, seq_len=10)
    chars = [4 + (ord(c) - 32) for c in text]  # the tiny tokenizer is one id per character
    rows, fingerprint = by_hand(chars, 3, 10, 1 if add_bos else None)
    assert cal.input_ids.tolist() == rows
    assert cal.fingerprint == fingerprint
    assert cal.bos is add_bos
    assert cal.input_ids.shape == (3, 10)


def test_jsonl_joins_text_fields(tmp_path):
    path = tmp_path / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["abc", "def"])) + "\n")
    cal = build_calibration(tiny_tokenizer(add_bos=False), str(path), samples=1, seq_len=8)
    assert cal.input_ids.tolist() == [[4 + ord(c) - 32 if c != "\n" else 99 for c in "abc\n\ndef"]]


def test_too_little_text_says_how_many_tokens(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("short text")
    with pytest.raises(FinercutError, match=r"it has 10 tokens, 2 samples x 8 need 14"):
        build_calibration(tiny_tokenizer(), str(path), samples=2, seq_len=8)


def test_missing_file_and_bad_jsonl(tmp_path):
    with pytest.raises(FinercutError, match="text file not found"):
        build_calibration(tiny_tokenizer(), str(tmp_path / "nope.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(FinercutError, match=r"bad.jsonl:2 has no string 'text' field"):
        build_calibration(tiny_tokenizer(), str(bad))
