"""One inference setting of ``benchmarks/export.py`` in a process of its own: a JSON line on stdout.

    python benchmarks/_export_child.py onnxruntime --model m.onnx --size 1024 2048 --repeats 2
    python benchmarks/_export_child.py pytorch --config <config> --context '<model.network.context JSON>' \
        --size 1024 2048

The onnxruntime child imports numpy and onnxruntime only (as ``examples/onnx_predict.py``), so its resident set is
what a deployment pays; the PyTorch child builds the network from the config and runs the module that is exported
(``dnlseg.deploy.ImageSegmenter``) on the same uint8 image.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runtime", choices=("onnxruntime", "pytorch"))
    parser.add_argument("--size", type=int, nargs=2, required=True)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up run")
    parser.add_argument("--model", help="the ONNX file (onnxruntime)")
    parser.add_argument("--config", help="the config (pytorch)")
    parser.add_argument("--context", default=None, help="model.network.context as JSON (pytorch)")
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (1, 3, *args.size), dtype=np.uint8)
    if args.runtime == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])

        def call():
            return session.run(None, {"image": image})[0]
    else:
        import torch

        from dnlseg.cli.export import build
        from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
        from dnlseg.deploy import ImageSegmenter

        overrides = [f"--model.network.context={args.context}"] if args.context is not None else []
        module = build(Path(args.config), overrides).model.eval()
        segmenter = ImageSegmenter(module.network, IMAGENET_MEAN, IMAGENET_STD).eval()
        tensor = torch.from_numpy(image)

        def call():
            with torch.no_grad():
                return segmenter(tensor).numpy()

    before = resident_bytes()
    times = []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "first": times[0], "times": times[1:], "peak": peak}))


if __name__ == "__main__":
    main()
