"""Side-by-side throughput: our JAX and MindSpore engines against timm (PyTorch) and mindcv.

    .venv/bin/python benchmarks/compare.py --families mobilenet_v3_small mobilenet_v1 \\
        --rounds 3 --out benchmarks/results/cpu_mnv3s_mnv1.md

Every measurement is one subprocess (our engines through `--mode=bench`'s function via
benchmarks/run_ours.py, the peers through benchmarks/peer_timm.py and peer_mindcv.py in their
own environments, see shared/tools/peer_env.sh), so no engine shares a process, a thread pool
or an allocator with another. A round runs every (family, engine) once; the engine order
rotates from round to round (the engines after the first reversed in every other round), so
background load on a shared machine falls on all engines alike. Each process reports the median
of its own timed repeats; the table shows the median over rounds, the spread over rounds, and
ratios ours / peer of those medians (JAX against timm, or mindcv where timm lacks the family:
ShuffleNetV1; MindSpore against mindcv) together with the range of the per-round ratios (each
taken from measurements minutes apart, not hours).

Protocol (same for all four): batch --batch, --size x --size, float32, random data created
once on the device; a training step = forward + softmax cross-entropy + backward + SGD with
momentum 0.9 (weight decay 1e-5); inference = forward in eval mode. On a GPU (--device gpu)
timm runs with AMP autocast and channels_last (timm's own --amp --channels-last) and our JAX
engine with train.dtype=bfloat16; mindcv is left out there (it targets Ascend).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, "benchmarks")

# family -> (our model fields, timm name, mindcv name); None: the peer has no such model.
FAMILIES = {
    "mobilenet_v3_small": ({"model": "mobilenet_v3_small"}, "mobilenetv3_small_100", "mobilenet_v3_small_100"),
    "mobilenet_v3_large": ({"model": "mobilenet_v3_large"}, "mobilenetv3_large_100", "mobilenet_v3_large_100"),
    "mobilenet_v1": ({"model": "mobilenet_v1"}, "mobilenetv1_100", "mobilenet_v1_100"),
    "shufflenet_v1": ({"model": "shufflenet_v1", "groups": 3}, None, "shufflenet_v1_g3_10"),
    "mobilenet_v2": ({"model": "mobilenet_v2"}, "mobilenetv2_100", "mobilenet_v2_100"),
    "mobilenet_v4_conv_small": ({"model": "mobilenet_v4", "variant": "conv_small"}, "mobilenetv4_conv_small", None),
}
SEED_FAMILIES = ("mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v1", "shufflenet_v1")  # the default run
# jax-xla: our JAX engine with conv_impl=xla; timm-compile: timm under torch.compile; mindcv-avx2: mindcv with
# oneDNN capped at AVX2, the limit our MindSpore engine sets on CPUs with AVX-512 (mobilenets_ms/onednn_isa.py)
ENGINES = ("jax", "mindspore", "timm", "mindcv", "jax-xla", "timm-compile", "mindcv-avx2")
# the peer each engine is measured against: the first of these with runs of the family (timm has no ShuffleNetV1)
PEERS_OF = {"jax": ("timm", "mindcv"), "jax-xla": ("timm", "mindcv"), "mindspore": ("mindcv",)}
# a second peer, reported under the table: MindSpore against mindcv run with the same oneDNN limit
SAME_ISA_PEER = {"mindspore": "mindcv-avx2"}


def command(engine: str, family: str, args) -> list[str] | None:
    ours, timm_name, mindcv_name = FAMILIES[family]
    common = ["--batch", str(args.batch), "--size", str(args.size), "--warmup", str(args.warmup),
              "--steps", str(args.steps), "--repeats", str(args.repeats)]
    if engine in ("jax", "jax-xla", "mindspore"):
        cmd = [sys.executable, os.path.join(HERE, "run_ours.py"), "--backend",
               "mindspore" if engine == "mindspore" else "jax", "--model", ours["model"], *common]
        if "groups" in ours:
            cmd += ["--groups", str(ours["groups"])]
        if "variant" in ours:
            cmd += ["--variant", ours["variant"]]
        if engine == "jax-xla":
            cmd += ["--conv-impl", "xla"]
        if engine == "mindspore" and args.device == "gpu":
            return None
        if engine.startswith("jax") and args.device == "gpu":
            cmd += ["--dtype", "bfloat16"]
        return cmd
    if engine in ("timm", "timm-compile"):
        if timm_name is None:
            return None
        cmd = [args.torch_python, os.path.join(HERE, "peer_timm.py"), "--model", timm_name, *common]
        if engine == "timm-compile":
            cmd.append("--compile")
        return cmd + (["--device", "cuda", "--amp"] if args.device == "gpu" else [])
    if engine in ("mindcv", "mindcv-avx2"):
        if mindcv_name is None or args.device == "gpu":
            return None
        cmd = [args.mindcv_python, os.path.join(HERE, "peer_mindcv.py"), "--model", mindcv_name, *common]
        return (["env", "ONEDNN_MAX_CPU_ISA=AVX2"] if engine == "mindcv-avx2" else []) + cmd
    raise ValueError(engine)


def engine_order(engines: list[str], round_index: int) -> list[str]:
    """The engines of round `round_index`: rotated by one per round (each engine runs first in turn),
    the ones after the first reversed in odd rounds, so that no engine always runs right after the
    same other one (a plain rotation keeps the cyclic order: every round, MindSpore followed JAX)."""
    shift = round_index % len(engines)
    order = list(engines[shift:]) + list(engines[:shift])
    return order[:1] + order[:0:-1] if round_index % 2 else order


def run_one(cmd: list[str], env: dict, timeout: int) -> dict:
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-600:]}"}
    record = json.loads(lines[-1])
    record["wall_s"] = round(time.time() - start, 1)
    return record


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            memory = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "memory": memory, "os": platform.platform(),
            "python": platform.python_version()}


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def median(values):
    return statistics.median(values) if values else None


def fmt(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def summarize(records: list[dict], families, engines) -> list[dict]:
    """One row per (family, engine): medians over rounds and same-round ratios against the peer."""
    rows = []
    for family in families:
        by_engine = {e: [r for r in records if r["family"] == family and r["engine"] == e and "error" not in r]
                     for e in engines}
        for engine in engines:
            runs = by_engine[engine]
            if not runs:
                continue
            train = [r["train_images_per_sec"] for r in runs]
            infer = [r["infer_images_per_sec"] for r in runs]
            row = {"family": family, "engine": engine, "model": runs[0]["model"], "rounds": len(runs),
                   "train": median(train), "train_min": min(train), "train_max": max(train), "infer": median(infer),
                   "peak_memory_gib": median([r["peak_memory"] for r in runs]) / 2**30,
                   "step_ms": median([r["step_ms"] for r in runs])}
            peer = next((p for p in PEERS_OF.get(engine, ()) if by_engine.get(p)), None)
            peer_runs = by_engine.get(peer) or []
            if peer_runs:
                row["peer"] = peer
                row["train_ratio"] = row["train"] / median([r["train_images_per_sec"] for r in peer_runs])
                row["infer_ratio"] = row["infer"] / median([r["infer_images_per_sec"] for r in peer_runs])
                per_round = [o["train_images_per_sec"] / p["train_images_per_sec"] for o in runs for p in peer_runs
                             if o["round"] == p["round"]]
                row["train_ratio_range"] = (min(per_round), max(per_round)) if per_round else None
            same_isa = by_engine.get(SAME_ISA_PEER.get(engine)) or []
            if same_isa:
                row["same_isa_peer"] = SAME_ISA_PEER[engine]
                row["same_isa_train_ratio"] = row["train"] / median([r["train_images_per_sec"] for r in same_isa])
                row["same_isa_infer_ratio"] = row["infer"] / median([r["infer_images_per_sec"] for r in same_isa])
            rows.append(row)
    return rows


def markdown(rows: list[dict], info: dict, argv: list[str], started: str, loads: tuple, args) -> str:
    lines = [f"Measured {started} UTC on {info['cpu']} ({info['logical_cpus']} logical CPUs, {info['memory']}), "
             f"{info['os']}; load average before / after: {loads[0]} | {loads[1]}.",
             f"Command: `{' '.join(shlex.quote(a) for a in argv)}`",
             f"Batch {args.batch}, {args.size}x{args.size}, {'bfloat16/AMP' if args.device == 'gpu' else 'float32'}, "
             f"{f'every process pinned to {args.threads} core(s)' if args.threads else 'default threads'}; "
             f"{args.rounds} rounds, each process {args.warmup} warm-up + median of {args.repeats} x "
             f"{args.steps} steps.", "",
             "| model | engine | train img/s (median) | train range | infer img/s | train ratio vs peer "
             "(per-round range) | infer ratio | step ms | peak memory GiB (GPU: device; CPU: RSS) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = "—"
        if "train_ratio" in row:
            low, high = row.get("train_ratio_range") or (None, None)
            ratio = f"**{row['train_ratio']:.2f}x** vs {row['peer']} ({fmt(low, 2)}–{fmt(high, 2)})"
        infer_ratio = f"{row['infer_ratio']:.2f}x" if "infer_ratio" in row else "—"
        lines.append(f"| {row['model']} | {row['engine']} | {fmt(row['train'])} | {fmt(row['train_min'])}–"
                     f"{fmt(row['train_max'])} | {fmt(row['infer'])} | {ratio} | {infer_ratio} | "
                     f"{fmt(row['step_ms'], 0)} | {row['peak_memory_gib']:.2f} |")
    same_isa = [row for row in rows if "same_isa_peer" in row]
    if same_isa:
        lines += ["", "Against the peer run with the same oneDNN limit (AVX2): " + "; ".join(
            f"{row['model']} {row['engine']} {row['same_isa_train_ratio']:.2f}x {row['same_isa_peer']} in training, "
            f"{row['same_isa_infer_ratio']:.2f}x in inference" for row in same_isa) + "."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(SEED_FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--engines", nargs="+", default=["jax", "mindspore", "timm", "mindcv"], choices=ENGINES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--torch-python", default="/work/peer/torch/bin/python")
    parser.add_argument("--mindcv-python", default="/work/peer/mindcv/bin/python")
    parser.add_argument("--threads", type=int, default=0,
                        help="pin every process to this many cores (taskset) with as many compute threads; "
                             "0: each framework's default (all cores)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per measurement process")
    parser.add_argument("--deadline", type=float, default=0,
                        help="seconds for the whole run: measurements not started by then are skipped (0: none)")
    parser.add_argument("--out", help="markdown table to write (raw records go next to it as .jsonl)")
    return parser.parse_args(argv)


def main():
    args = parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    info, load_before = machine_info(), load_average()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GLOG_v="3")
    # Compile the JAX programs once per configuration: later rounds load them from disk.
    cache = tempfile.mkdtemp(prefix="mobilenets_jax_cache_")
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["JAX_PLATFORMS"] = "cpu"
    prefix = []
    if args.threads:
        cores = sorted(os.sched_getaffinity(0))[:args.threads]
        prefix = ["taskset", "-c", ",".join(map(str, cores))]
        n = str(args.threads)
        # torch and oneDNN/MKL read these; XLA:CPU and MindSpore size their pools from the affinity mask.
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    records = []
    stop_at = time.time() + args.deadline if args.deadline else None
    raw = open(os.path.splitext(args.out)[0] + ".jsonl", "a") if args.out else None
    for round_index in range(args.rounds):
        order = engine_order(args.engines, round_index)
        for family in args.families:
            for engine in order:
                cmd = command(engine, family, args)
                if cmd is None:
                    continue
                if stop_at is not None and time.time() >= stop_at:
                    print(f"[round {round_index + 1}/{args.rounds}] {family} {engine}: skipped (past --deadline "
                          f"{args.deadline:.0f} s)", flush=True)
                    continue
                timeout = args.timeout if stop_at is None else max(1, min(args.timeout, int(stop_at - time.time()) + 60))
                record = run_one(prefix + cmd, env, timeout)
                record.update(family=family, engine=engine, round=round_index, load=load_average(), started=started)
                records.append(record)
                if raw:
                    raw.write(json.dumps(record) + "\n")
                    raw.flush()
                summary = record.get("error") or (f"train {record['train_images_per_sec']} img/s, infer "
                                                  f"{record['infer_images_per_sec']} img/s, {record['wall_s']} s")
                print(f"[round {round_index + 1}/{args.rounds}] {family} {engine}: {summary}", flush=True)
    rows = summarize(records, args.families, args.engines)
    table = markdown(rows, info, [os.path.relpath(sys.executable, ROOT)] + sys.argv, started,
                     (load_before, load_average()), args)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)
        raw.close()


if __name__ == "__main__":
    main()
