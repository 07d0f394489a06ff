"""Runs inside lm-evaluation-harness's own environment: time its scoring of one task, as scorer_speed.py asks.

    <lm-eval python> benchmarks/lm_eval_worker.py SPEC.json OUT.json

SPEC: {checkpoint, task, yaml_task, num_fewshot, yaml_dir, limit, batch_size, device, dtype}. Only ``HFLM.loglikelihood`` is timed
(tokenisation, sorting, forward passes): dataset loading and request building are left out, to lm-eval's
advantage. Writes the seconds, peak memory, accuracies and every per-choice log-likelihood.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=spec["checkpoint"], dtype=spec["dtype"], batch_size=spec["batch_size"], device=spec["device"])
    timed = {"seconds": 0.0, "requests": 0}
    inner = lm.loglikelihood

    def loglikelihood(requests, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = inner(requests, *args, **kwargs)
        if spec["device"].startswith("cuda"):
            torch.cuda.synchronize()
        timed["seconds"] += time.perf_counter() - start
        timed["requests"] += len(requests)
        return out

    lm.loglikelihood = loglikelihood
    if spec["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    task = f"local_{spec.get('yaml_task', spec['task'])}"
    res = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=spec["limit"], log_samples=True,
                                  num_fewshot=spec.get("num_fewshot") or None,
                                  task_manager=TaskManager(include_path=spec["yaml_dir"]))
    metrics = {k.split(",")[0]: v for k, v in res["results"][task].items() if k.startswith(("acc,", "acc_norm,"))}
    lls = {int(s["doc_id"]): [float(r[0][0]) for r in s["resps"]] for s in res["samples"][task]}
    json.dump({
        "seconds": timed["seconds"], "requests": timed["requests"], "metrics": metrics, "logliks": lls,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if spec["device"].startswith("cuda") else None,
        "versions": {"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?", "torch": torch.__version__},
    }, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
