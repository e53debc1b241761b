"""One training epoch of the same BN-MLP in tuner.nn and in PyTorch on the CPU, side by side.

Network: 784 inputs, 3 hidden layers of WIDTH with BatchNorm and ReLU, 10 outputs; SGD with
momentum 0.9; 60,000 synthetic samples. Rows (WIDTHxBATCH): 256x128, 1024x128 and the
small-batch 128x32, where per-step overhead dominates (digits trials use batches of 32 to
64). Runs alternate (ours, torch, matrix multiplies, ours, ...) with the same BLAS/torch
thread count; the median of the repeats is reported. Prints one JSON object per row:

    width, batch, ours_samples_per_s, torch_samples_per_s, ratio_vs_torch (PyTorch's epoch
    time / ours: above 1, ours is faster), gflops (ours), gemm_fraction (the time NumPy
    takes for the matrix multiplies of the same shapes alone, over our epoch's time: the
    share of the epoch spent at matrix-multiply speed), plus threads, repeats, the BLAS
    kernel and the load average before the row.

Usage: ``pip install -e '.[bench]' && python benchmarks/bench_training.py [--rows 256x128]``.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (set on some machines here to keep old OpenBLAS
builds safe) force a slower kernel on a current NumPy; the script re-executes itself without
both (``--keep-blas-env`` keeps them) and reports the kernel it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
N_SAMPLES, N_INPUTS, N_CLASSES, DEPTH = 60_000, 784, 10, 3
ROWS = ("256x128", "1024x128", "128x32")


def _row(text: str) -> tuple[int, int]:
    width, _, batch = text.partition("x")
    try:
        return int(width), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a row is WIDTHxBATCH (e.g. 256x128), got {text!r}"
        ) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_row, nargs="+", default=[_row(r) for r in ROWS])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--samples", type=int, default=N_SAMPLES)
    parser.add_argument("--keep-blas-env", action="store_true")
    args = parser.parse_args()
    if not args.keep_blas_env and any(k in os.environ for k in BLAS_ENV):
        env = {k: v for k, v in os.environ.items() if k not in BLAS_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import numpy as np
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from tuner.nn import MLP, Momentum, fit

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    kernel = next(
        (i.get("architecture") for i in threadpool_info() if i["user_api"] == "blas"), None
    )
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples, N_INPUTS), dtype=np.float32)
    y = rng.integers(0, N_CLASSES, args.samples)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)

    for width, batch in args.rows:
        sizes = [N_INPUTS] + [width] * DEPTH + [N_CLASSES]
        ours = MLP(N_INPUTS, [width] * DEPTH, N_CLASSES, seed=0)
        ours_opt = Momentum(0.01, 0.9)

        layers = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1], strict=True):
            layers += [
                torch.nn.Linear(n_in, n_out, bias=False),
                torch.nn.BatchNorm1d(n_out),
                torch.nn.ReLU(),
            ]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-2], N_CLASSES))
        torch_opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(0)

        def run_ours(seed: int) -> None:
            fit(ours, X, y, epochs=1, batch_size=batch, optimizer=ours_opt, seed=seed)

        def run_torch(seed: int) -> None:
            net.train()
            order = torch.randperm(args.samples, generator=gen)
            for start in range(0, args.samples, batch):
                idx = order[start : start + batch]
                loss = torch.nn.functional.cross_entropy(net(X_t[idx]), y_t[idx])
                torch_opt.zero_grad(set_to_none=True)
                loss.backward()
                torch_opt.step()

        def run_gemm(seed: int) -> None:
            # The matrix multiplies of the same epoch and nothing else.
            ws = [np.ones((a, b), np.float32) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
            acts = [np.ones((batch, n), np.float32) for n in sizes]
            dws = [np.empty_like(w) for w in ws]
            for _ in range(args.samples // batch):
                for i, w in enumerate(ws):
                    np.matmul(acts[i], w, out=acts[i + 1])
                for i in reversed(range(len(ws))):
                    np.matmul(acts[i].T, acts[i + 1], out=dws[i])
                    if i:
                        np.matmul(acts[i + 1], ws[i].T, out=acts[i])

        load = round(os.getloadavg()[0], 2)
        times: dict[str, list[float]] = {"ours": [], "torch": [], "gemm": []}
        run_ours(99), run_torch(99)  # warm-up: buffers, allocator, thread pools
        for r in range(args.repeats):
            for name, fn in (("ours", run_ours), ("torch", run_torch), ("gemm", run_gemm)):
                t0 = time.perf_counter()
                fn(r)
                times[name].append(time.perf_counter() - t0)
        ours_s, torch_s, gemm_s = (statistics.median(times[k]) for k in ("ours", "torch", "gemm"))
        macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        flops_per_sample = 2 * (
            3 * macs - sizes[0] * sizes[1]
        )  # forward, dW, dx (not for the input)
        print(
            json.dumps(
                {
                    "width": width,
                    "batch": batch,
                    "ours_samples_per_s": round(args.samples / ours_s, 1),
                    "torch_samples_per_s": round(args.samples / torch_s, 1),
                    "ratio_vs_torch": round(torch_s / ours_s, 3),
                    "gflops": round(flops_per_sample * args.samples / ours_s / 1e9, 2),
                    "gemm_fraction": round(gemm_s / ours_s, 3),
                    "threads": args.threads,
                    "repeats": args.repeats,
                    "blas_kernel": kernel,
                    "torch_version": torch.__version__,
                    "load_average": load,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
