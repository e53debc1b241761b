"""Peak memory of loading an MNIST-sized dataset through tuner's loader.

Builds 60,000 x 784 training rows (plus, for the IDX formats, MNIST's 10,000 test rows) in a
temporary folder, then, for each format, loads it with ``tuner.data.load_training_data`` (load,
stratified split, preprocessing fitted on the training rows: what every study worker does) in
a fresh subprocess, and measures:

- ``tracemalloc_peak``: the peak of memory traced by tracemalloc during the call (NumPy
  reports its array buffers to tracemalloc), relative to the start of the call;
- ``rss_peak_delta``: the process's peak resident set size during the call (``VmHWM`` of
  ``/proc/self/status``, reset just before the call through ``/proc/self/clear_refs``) minus
  its resident size just before the call (after imports). Not ``ru_maxrss``: Linux carries
  the parent's peak over ``fork``/``exec`` into it.

``ratio`` is each peak divided by ``array_bytes``, the size of the 60,000 x 784 float32
array (188,160,000 bytes). The target is a ratio below 3. Prints one JSON object per format,
one per line.

Formats: ``npz-float32`` (an uncompressed ``.npz`` of float32 ``X``), ``idx-float32`` (an MNIST
folder whose images are IDX type 0x0D, float32), ``idx-uint8`` (an MNIST folder in the real
format, uint8 pixels, gzipped), and, only when asked (slow to write), ``csv``.

Usage: ``python benchmarks/bench_loading.py [--formats npz-float32 idx-float32 idx-uint8 csv]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_TRAIN, N_TEST, N_PIXELS, N_CLASSES = 60_000, 10_000, 784, 10
ARRAY_BYTES = N_TRAIN * N_PIXELS * 4
FORMATS = ("npz-float32", "idx-float32", "idx-uint8", "csv")


def _images(rng, n, dtype):
    import numpy as np

    pixels = rng.integers(0, 256, size=(n, N_PIXELS), dtype=np.uint8)
    return pixels if dtype == "uint8" else (pixels / np.float32(255)).astype(np.float32)


def build(fmt: str, folder: Path) -> str:
    """Write the dataset of ``fmt`` under ``folder``; return its ``data.source``."""
    import numpy as np

    from tuner.data.idx import write_idx

    rng = np.random.default_rng(0)
    y_train = rng.integers(0, N_CLASSES, size=N_TRAIN).astype(np.uint8)
    if fmt == "npz-float32":
        np.savez(folder / "mnist.npz", X=_images(rng, N_TRAIN, "float32"), y=y_train)
        return f"npz:{folder / 'mnist.npz'}"
    if fmt == "csv":
        import pandas as pd

        table = pd.DataFrame(
            _images(rng, N_TRAIN, "uint8"), columns=[f"p{i}" for i in range(N_PIXELS)]
        )
        table["label"] = y_train
        table.to_csv(folder / "mnist.csv", index=False)
        return f"csv:{folder / 'mnist.csv'}"
    dtype = fmt.split("-")[1]
    compress = dtype == "uint8"
    suffix = ".gz" if compress else ""
    shape = (28, 28)
    write_idx(
        folder / f"train-images-idx3-ubyte{suffix}",
        _images(rng, N_TRAIN, dtype).reshape(-1, *shape),
        compress=compress,
    )
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", y_train, compress=compress)
    write_idx(
        folder / f"t10k-images-idx3-ubyte{suffix}",
        _images(rng, N_TEST, dtype).reshape(-1, *shape),
        compress=compress,
    )
    write_idx(
        folder / f"t10k-labels-idx1-ubyte{suffix}",
        rng.integers(0, N_CLASSES, size=N_TEST).astype(np.uint8),
        compress=compress,
    )
    return f"mnist:{folder}"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(source: str) -> dict:
    """Load ``source`` once (in this process) and return the peaks; run in a fresh process."""
    import tracemalloc

    from tuner.data import load_training_data
    from tuner.spec import parse_spec_dict

    raw = {"data": {"source": source}}
    if source.startswith("csv:"):
        raw["data"]["target"] = "label"
    data_spec = parse_spec_dict(raw).data
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    rss_before = _status_bytes("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    data = load_training_data(data_spec)
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = _status_bytes("VmHWM")
    result_bytes = data.X_train.nbytes + data.X_validation.nbytes
    return {
        "rows_train": len(data.y_train),
        "rows_validation": len(data.y_validation),
        "result_bytes": result_bytes,
        "tracemalloc_peak": traced_peak,
        "rss_peak_delta": rss_peak - rss_before,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS[:3]))
    parser.add_argument("--child", metavar="SOURCE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats:
            folder = Path(tmp) / fmt
            folder.mkdir()
            source = build(fmt, folder)
            out = subprocess.run(
                [sys.executable, __file__, "--child", source],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out)
            print(
                json.dumps(
                    {
                        "format": fmt,
                        "array_bytes": ARRAY_BYTES,
                        **result,
                        "tracemalloc_ratio": round(result["tracemalloc_peak"] / ARRAY_BYTES, 3),
                        "rss_ratio": round(result["rss_peak_delta"] / ARRAY_BYTES, 3),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
