"""PyTorch CPU reference for `longtail bench --model resnet32 --batch 128`: the same ResNet-32
(kaidic/LDAM-DRW definition, from assets/fixtures/make_resnet_fixture.py), batch 128 of 3x32x32,
cross-entropy, SGD with momentum; median seconds per training step after warm-up.

    python3 scripts/pytorch_cpu_step.py [--threads 2] [--samples 5] [--device cpu|cuda] [--json]

`--device cuda` times the same step in PyTorch CUDA eager (what scripts/gpu-check.sh compares
against on a lent GPU). Needs torch and safetensors; not part of the test suite.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "assets", "fixtures"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from make_resnet_fixture import ResNetCifar  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = ResNetCifar(5).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    step()
    step()
    times = []
    for _ in range(a.samples):
        t0 = time.perf_counter()
        step()  # .item() synchronises on CUDA too
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    if a.json:
        import json

        print(json.dumps({"framework": f"pytorch {torch.__version__}", "device": a.device,
                          "threads": a.threads, "model": "resnet32", "batch": a.batch,
                          "ms": med * 1e3, "images_per_s": a.batch / med, "samples": a.samples}))
        return
    print(
        f"pytorch {torch.__version__} {a.device}, {a.threads} threads: resnet32 batch {a.batch}: "
        f"{med * 1e3:.1f} ms/step, {a.batch / med:.2f} images/s (median of {a.samples})"
    )


if __name__ == "__main__":
    main()
