"""Run llama.cpp's own convert_hf_to_gguf.py (shipped in the llama-cpp-python sdist) on a folder.

    python convert_probe.py CONVERTER_DIR HF_FOLDER OUT.gguf

The tests' character tokenizer is not one the converter knows, so its `set_vocab` is replaced by a
plain token list; everything else (hparams, tensor names, Q/K permutation) is the converter's own.
"""

import json
import sys
from pathlib import Path


def main() -> None:
    converter, folder, out = sys.argv[1:4]
    sys.path.insert(0, converter)
    sys.argv = ["convert_hf_to_gguf.py", folder, "--outfile", out, "--outtype", "f32"]
    import convert_hf_to_gguf as convert
    from conversion.deci import DeciModel
    from conversion.llama import LlamaModel

    def set_vocab(self):
        data = json.loads((Path(folder) / "tokenizer.json").read_text())
        by_id = {i: t for t, i in data["model"]["vocab"].items()}
        n = self.hparams["vocab_size"]
        self.gguf_writer.add_tokenizer_model("gpt2")
        self.gguf_writer.add_tokenizer_pre("default")
        self.gguf_writer.add_token_list([by_id.get(i, f"[PAD{i}]") for i in range(n)])
        self.gguf_writer.add_token_types([1] * n)
        self.gguf_writer.add_token_merges(["\u00ff \u00ff"])

    DeciModel.set_vocab = set_vocab
    LlamaModel.set_vocab = set_vocab
    convert.main()


if __name__ == "__main__":
    main()
