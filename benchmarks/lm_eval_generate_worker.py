"""Runs lm-evaluation-harness's HF ``generate_until`` on a local task YAML, as generation_parity.py asks, timing only
``HFLM.generate_until`` (dataset loading and request building left out, to lm-eval's advantage).

    <lm-eval python> benchmarks/lm_eval_generate_worker.py SPEC.json OUT.json

SPEC: {checkpoint, task, yaml_dir, limit, num_fewshot, batch_size, dtype}. Writes the seconds, peak memory, each
item's raw generation and its exact match per filter.
"""

from __future__ import annotations

import json
import sys
import time

from peak_memory import peak_mb  # benchmarks/peak_memory.py



def main() -> None:
    spec = json.load(open(sys.argv[1]))
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=spec["checkpoint"], dtype=spec["dtype"], batch_size=spec["batch_size"], device="cpu")
    timed = {"seconds": 0.0, "requests": 0}
    inner = lm.generate_until

    def generate_until(requests, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        start = time.perf_counter()
        out = inner(requests, *args, **kwargs)
        timed["seconds"] += time.perf_counter() - start
        timed["requests"] += len(requests)
        return out

    lm.generate_until = generate_until
    res = lm_eval.simple_evaluate(model=lm, tasks=[spec["task"]], limit=spec["limit"], log_samples=True,
                                  num_fewshot=spec["num_fewshot"], task_manager=TaskManager(include_path=spec["yaml_dir"]))
    samples = sorted(res["samples"][spec["task"]], key=lambda s: int(s["doc_id"]))
    first = sorted({s["filter"] for s in samples})[0]
    once = [s for s in samples if s["filter"] == first]  # a sample per doc and filter: the generation once per doc
    json.dump({
        "seconds": timed["seconds"], "requests": timed["requests"],
        "generations": [s["resps"][0][0] for s in once],
        "prompts": [s["arguments"]["gen_args_0"]["arg_0"] if isinstance(s["arguments"], dict) else s["arguments"][0][0]
                    for s in once],
        "exact_match": {f: [float(s.get("exact_match", 0.0)) for s in samples if s["filter"] == f]
                        for f in sorted({s["filter"] for s in res["samples"][spec["task"]]})},
        "filtered": {f: [s["filtered_resps"][0] for s in samples if s["filter"] == f]
                     for f in sorted({s["filter"] for s in res["samples"][spec["task"]]})},
        "peak_rss_mb": peak_mb(),
        "versions": {"lm_eval": getattr(lm_eval, "__version__", "?")},
    }, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
