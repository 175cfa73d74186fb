"""What reading an OTLP export's runs costs: the proxy's wire walker (proxy/ingest/otlp.py)
beside the protobuf library decoding the same bytes (upb, what a decoder-based reader would use),
in CPU time and peak memory, each in a fresh process, taken in turns.

    python -m benchmarks.otlp_reading [--rounds 3]

Exports: an exporter's batch (512 spans of 30 attributes), and a hostile 20 MiB body of
2-byte attributes (the walker stops at MAX_FIELDS and cuts; the library decodes it all).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.otlp import attribute, span, traces

EXPORTS = ("batch", "hostile")
READERS = ("walker", "library")

_CHILD = r"""
import json, pathlib, sys, time

def high_water_kib():  # this process's own peak (ru_maxrss keeps the parent's across exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from proxy.ingest.reader import UnreadableBody
from proxy.ingest.otlp import TRACES, OtlpReader

body, reader = pathlib.Path(sys.argv[1]).read_bytes(), sys.argv[2]
before = high_water_kib()
started = time.process_time()
if reader == "walker":
    walker = OtlpReader(body, TRACES)
    try:
        for _ in walker.slices():
            pass
        outcome = f"{len(walker.run_ids)} runs"
    except UnreadableBody as exc:
        outcome = f"cut ({exc.reason.value})"
else:
    decoded = ExportTraceServiceRequest.FromString(body)
    outcome = f"{sum(len(s.spans) for r in decoded.resource_spans for s in r.scope_spans)} spans"
cpu = time.process_time() - started
grown = high_water_kib() - before
print(json.dumps({"bytes": len(body), "cpu": cpu, "kib": grown, "outcome": outcome}))
"""


def write_exports(directory: Path) -> dict[str, Path]:
    """Each export, built once with the official classes, in a file a child process reads."""
    attributes = [attribute(f"gen_ai.request.k{i}", "v" * 20) for i in range(30)]
    tiny = KeyValue(key="", value=AnyValue())  # 2 bytes on the wire, as field 9 of a span
    bodies = {
        "batch": traces([span(i.to_bytes(8, "big"), attributes=attributes) for i in range(512)]),
        "hostile": traces([span(b"\x01" * 8, attributes=[tiny] * (20 * 1024 * 1024 // 4))]),
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = directory / f"{name}.pb"
        paths[name].write_bytes(body)
    return paths


def measure(path: Path, reader: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), reader],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[tuple[str, str], list[dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        paths = write_exports(Path(directory))
        for _ in range(args.rounds):
            for export in EXPORTS:
                for reader in READERS:  # in turns, so a noisy moment hits both
                    runs.setdefault((export, reader), []).append(measure(paths[export], reader))
    for export in EXPORTS:
        print(f"{export}: {runs[(export, 'walker')][0]['bytes']:,} bytes")
        for reader in READERS:
            results = runs[(export, reader)]
            cpu = median(float(str(r["cpu"])) for r in results)
            kib = median(int(str(r["kib"])) for r in results)
            print(f"  {reader:8} {cpu * 1000:8.1f} ms CPU  {kib / 1024:8.1f} MiB peak growth"
                  f"  {results[0]['outcome']}")  # fmt: skip


if __name__ == "__main__":
    main()
