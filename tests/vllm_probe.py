"""Run by tests/test_serve_vllm.py with the vLLM venv's python: `vllm_probe.py IDS FOLDER...` loads each
folder in turn with vLLM's offline LLM and prints, per folder, one `PROBE {json}` line: prompt log-probs
and which layers hold a KV cache. Imports nothing of ours."""

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


def main() -> None:
    import gc

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    for folder in sys.argv[2:]:
        probe(LLM, SamplingParams, TokensPrompt, folder, json.loads(sys.argv[1]))
        gc.collect()


def probe(LLM, SamplingParams, TokensPrompt, folder: str, ids: list[int]) -> None:
    llm = LLM(
        model=folder,
        trust_remote_code=True,
        dtype="float32",
        max_model_len=64,
        enforce_eager=True,
        seed=0,
        max_num_seqs=1,
    )
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    logprobs = [None] + [
        entry[tok].logprob for tok, entry in zip(ids[1:], out.prompt_logprobs[1:], strict=True)
    ]
    vllm_config = llm.llm_engine.vllm_config
    attention = sorted(vllm_config.compilation_config.static_forward_context)
    core = llm.llm_engine.engine_core
    core = getattr(core, "engine_core", core)
    kv_layers = []
    kv_config = getattr(getattr(core, "scheduler", None), "kv_cache_config", None)
    if kv_config is not None:
        for group in kv_config.kv_cache_groups:
            kv_layers.extend(group.layer_names)
    print(
        "PROBE "
        + json.dumps(
            {
                "prompt_logprobs": logprobs,
                "attention_layers": attention,
                "kv_cache_layers": sorted(kv_layers),
                "folder": folder,
                "next_token": out.outputs[0].token_ids[0],
            }
        ),
        flush=True,
    )
    llm.llm_engine.engine_core.shutdown() if hasattr(llm.llm_engine.engine_core, "shutdown") else None
    del llm


if __name__ == "__main__":
    main()
