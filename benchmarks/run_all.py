"""Run every ``benchmarks/bench_*.py`` script and collect their JSON results.

Each benchmark exposes ``main(argv) -> dict`` and prints its own Markdown table; this runner calls
them in turn (``--quick`` forwards a fast smoke configuration), writes one JSON file per benchmark
into ``--json-dir`` and a combined ``benchmarks.md`` with every table and the machine it ran on.

Usage::

    python benchmarks/run_all.py --json-dir bench-results [--quick] [--only sdm,memory]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def machine_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}; {torch.get_num_threads()} torch threads; {gpu}; "
        f"Python {platform.python_version()}; torch {torch.__version__}"
    )


def load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load benchmark {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json-dir", type=Path, default=Path("bench-results"))
    parser.add_argument("--quick", action="store_true", help="fast smoke configuration")
    parser.add_argument(
        "--only", default="", help="comma-separated benchmark names (e.g. sdm,memory)"
    )
    args = parser.parse_args(argv)
    args.json_dir.mkdir(parents=True, exist_ok=True)
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    scripts = sorted(HERE.glob("bench_*.py"))
    if wanted:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    if not scripts:
        print("no benchmark matched", file=sys.stderr)
        return 2
    sections = [f"Machine: {machine_description()}\n"]
    failures = 0
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"\n## {name}\n", flush=True)
        out = io.StringIO()
        t0 = time.perf_counter()
        module = load(script)
        bench_argv = ["--json", str(args.json_dir / f"{name}.json")]
        if args.quick:
            bench_argv.append("--quick")
        try:
            with contextlib.redirect_stdout(_Tee(sys.stdout, out)):
                module.main(bench_argv)
        except Exception as exc:  # report and continue with the other benchmarks
            failures += 1
            print(f"benchmark {name} failed: {exc!r}", file=sys.stderr)
            continue
        sections.append(
            f"## {name}\n\n{out.getvalue().strip()}\n\n({time.perf_counter() - t0:.0f} s)\n"
        )
    (args.json_dir / "benchmarks.md").write_text("\n".join(sections))
    (args.json_dir / "machine.json").write_text(json.dumps({"machine": machine_description()}))
    print(f"\nwrote {args.json_dir / 'benchmarks.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
