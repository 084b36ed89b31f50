"""Same numbers before and after a refactor: a fixed set of small vitshrink runs, recorded bit for bit.

What it runs (all on the digits data, CPU, OMP_NUM_THREADS=1, a few steps each), in the folder --out:

  teacher   `finetune` of a tiny ViT (16 px, patch 4, 4 blocks of 64)      - the teacher of every run
  table     `profile` of the teacher on ort-cpu (or --table FILE: a saved one, since timings vary)
  a         `compress --reduce flops=0.3`                                 - width
  b         `compress --reduce flops=0.45 --stages width,depth`           - width + depth
  c         `compress --reduce latency=0.3 --latency-table T --no-latency-check`
  d         `compress --plan a.work/stage1-width/plan.json`
  a.onnx    `export a --target onnx`
  a.bench   `bench a` on torch-cpu and ort-cpu, one timed call (only the untimed fields are kept)
  g         `compress` as a with --epochs 2, stopped by Ctrl-C (SIGINT) once its first checkpoint
            exists, then rerun with --resume; g-once is the same run uninterrupted

What it records in OUT/numbers.json (sorted keys; compared by --compare):

  artifacts    for every artifact folder (final ones and the stage artifacts in the work folders):
               dtype, shape and sha256 of every tensor in model.safetensors (read from the file's own
               header, so bf16 needs no numpy), config.json, and compression.json less its timings and paths
  plans        the plan.json and plan-checks.json of every stage in the work folders
  onnx         op types of the graph's nodes in order, sha256 of every initializer, inputs and outputs
  bench        params, MACs, widths, file sizes, accuracy per backend, FLOPs/params reduction, top-1 drop
  resume       whether the resumed run g equals the uninterrupted g-once, tensor for tensor
  commands     the command lines (paths relative to OUT)
  inputs       sha256 of the latency table
  info         not compared: the code the CLI imported, where the Ctrl-C stopped run g, the machine

It imports nothing of vitshrink (module paths change in a refactor): it drives the command line.

    python research/same_numbers.py --out /tmp/sn1                        # `vitshrink` on PATH
    python research/same_numbers.py --out /tmp/sn2 --table /tmp/sn1/latency-table.json
    python research/same_numbers.py --compare /tmp/sn1/numbers.json /tmp/sn2/numbers.json
    # another checkout, without installing it: its cli.py, its folder first on PYTHONPATH
    python research/same_numbers.py --out /tmp/old --cli "python /tmp/old-tree/cli.py" --pythonpath /tmp/old-tree

--compare prints every difference and exits 1, or prints "identical: ..." and exits 0.
Compare records made on the same machine with the same packages: the CPU decides --amp auto (bf16 on
CPUs with avx512_bf16/amx), and kernels differ across torch and onnxruntime versions. A whole run takes
about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

SMALL = ["--dataset", "digits", "--max-steps-per-epoch", "3", "--calib-batches", "2", "--eval-limit", "64",
         "--no-progress"]
TEACHER = ["finetune", "--model", "vit_tiny_patch16_224", "--model-arg", "img_size=16", "--model-arg", "patch_size=4",
           "--model-arg", "embed_dim=64", "--model-arg", "depth=4", "--model-arg", "num_heads=4",
           "--dataset", "digits", "--epochs", "4", "--out", "teacher", "--no-progress"]
PROFILE = ["profile", "--model", "teacher", "--target", "ort-cpu", "--threads", "1", "--fit-models", "2",
           "--out", "latency-table.json", "--no-progress"]
RUNS = {  # name -> compress arguments (each writes NAME and NAME.work)
    "a": ["--epochs", "1", "--reduce", "flops=0.3"],
    "b": ["--epochs", "1", "--reduce", "flops=0.45", "--stages", "width,depth"],
    "c": ["--epochs", "1", "--reduce", "latency=0.3", "--latency-table", "latency-table.json", "--no-latency-check"],
    "d": ["--epochs", "1", "--plan", "a.work/stage1-width/plan.json"],
}
EXPORT = ["export", "a", "--target", "onnx", "--out", "a.onnx"]
BENCH = ["bench", "a", "--backends", "torch-cpu,ort-cpu", "--batch-sizes", "1", "--warmup", "1", "--warmup-time", "0",
         "--min-iters", "1", "--min-time", "0", "--no-memory", "--no-fvcore", "--dataset", "digits", "--limit", "64",
         "--no-plot", "--no-progress", "--out", "a.bench"]
RESUMED = ["--epochs", "2", "--reduce", "flops=0.3"]
# keys of compression.json and bench.json that hold timings or machine paths: never compared
VOLATILE = {"seconds", "distill_seconds", "images_per_s", "path", "source", "created"}
COMPARED = ("artifacts", "plans", "onnx", "bench", "resume", "commands", "inputs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="empty (or new) folder for the runs and numbers.json")
    parser.add_argument("--table", type=Path, help="latency table to reuse (default: profile one, into OUT)")
    parser.add_argument("--cli", default="vitshrink", help="command that runs the CLI [default: vitshrink]")
    parser.add_argument("--pythonpath", type=Path, help="folder put first on PYTHONPATH for the CLI")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two numbers.json")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("--out or --compare is required")
    record(args.out.resolve(), args.table.resolve() if args.table else None, shlex.split(args.cli),
           args.pythonpath.resolve() if args.pythonpath else None)
    return 0


# ---------------------------------------------------------------- running

class Runner:
    def __init__(self, out: Path, cli: list[str], pythonpath: Path | None):
        self.out, self.cli = out, cli
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        if pythonpath:
            self.env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.commands: dict[str, str] = {}

    def __call__(self, name: str, args: list[str]) -> str:
        self.commands[name] = shlex.join(["vitshrink", *args])
        print(f"[{name}] {self.commands[name]}", flush=True)
        done = subprocess.run([*self.cli, *args], cwd=self.out, env=self.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}")
        return done.stdout

    def interrupted(self, name: str, args: list[str], checkpoint: Path) -> str:
        """Run, send SIGINT once `checkpoint` exists (the first epoch's), return the run's last line."""
        self.commands[name] = shlex.join(["vitshrink", *args]) + "  # Ctrl-C after the first checkpoint"
        print(f"[{name}] {self.commands[name]}", flush=True)
        p = subprocess.Popen([*self.cli, *args], cwd=self.out, env=self.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while not (self.out / checkpoint).exists() and p.poll() is None:
            time.sleep(0.002)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        output = p.communicate()[0]
        last = output.strip().splitlines()[-1] if output.strip() else ""
        return f"exit {p.returncode}: {last}"

    def code(self) -> dict:
        """Which vitshrink the CLI's interpreter imports (with this environment)."""
        python = self.cli[0]
        if not Path(python).name.startswith("python"):  # a console script: its shebang's interpreter
            line = Path(shutil.which(python) or python).read_text().splitlines()[0]
            python = line[2:].strip().split()[0]
        probe = "import vitshrink; print(vitshrink.__file__); print(list(vitshrink.__path__))"
        done = subprocess.run([python, "-c", probe], cwd=self.out, env=self.env, text=True, capture_output=True)
        return {"cli": shlex.join(self.cli), "python": python, "vitshrink": done.stdout.strip().splitlines(),
                "pythonpath": self.env.get("PYTHONPATH")}


def record(out: Path, table: Path | None, cli: list[str], pythonpath: Path | None) -> None:
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out, cli, pythonpath)
    info = {"code": run.code(), "machine": os.uname().nodename, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"code: {info['code']['vitshrink']}", flush=True)

    run("teacher", TEACHER)
    if table:
        shutil.copyfile(table, out / "latency-table.json")
        info["table"] = f"given: {table}"
    else:
        run("profile", PROFILE)
        info["table"] = f"profiled by this run: {run.commands.pop('profile')}"
    for name, extra in RUNS.items():
        run(name, ["compress", "--model", "teacher", *SMALL, *extra, "--out", name])
    run("export", EXPORT)
    run("bench", BENCH)
    resumed = ["compress", "--model", "teacher", *SMALL, *RESUMED]
    run("g-once", [*resumed, "--out", "g-once"])
    info["g_stop"] = run.interrupted("g", [*resumed, "--out", "g"], Path("g.work/stage1-width/checkpoint/state.json"))
    run("g-resume", [*resumed, "--out", "g", "--resume"])

    numbers: dict = {"info": info, "commands": run.commands, "artifacts": {}, "plans": {}}
    numbers["inputs"] = {"latency_table_sha256": sha256_file(out / "latency-table.json")}
    for folder in sorted(p.parent for p in out.rglob("model.safetensors")):
        if (folder / "config.json").is_file():  # an artifact (not a checkpoint or kept-best folder)
            numbers["artifacts"][folder.relative_to(out).as_posix()] = artifact_numbers(folder)
    for plan in sorted(out.glob("*.work/stage*/plan*.json")):
        if plan.name in ("plan.json", "plan-checks.json"):
            numbers["plans"][plan.relative_to(out).as_posix()] = json.loads(plan.read_text())
    numbers["onnx"] = {"a.onnx/model.onnx": onnx_numbers(out / "a.onnx" / "model.onnx")}
    numbers["bench"] = {"a.bench": bench_numbers(out / "a.bench" / "bench.json")}
    g, once = (numbers["artifacts"][k]["tensors"] for k in ("g", "g-once"))
    numbers["resume"] = {"g_equals_g_once": g == once}
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    n = sum(len(a["tensors"]) for a in numbers["artifacts"].values())
    print(f"{out / 'numbers.json'}: {len(numbers['artifacts'])} artifacts, {n} tensors, {len(numbers['plans'])} plan "
          f"files; resumed == uninterrupted: {g == once} (g: {info['g_stop']})")


# ---------------------------------------------------------------- reading the outputs

def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors_numbers(path: Path) -> tuple[dict, dict]:
    """{name: "DTYPE[shape] sha256"} from the file's header and bytes, and its __metadata__."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        tensors[name] = f"{t['dtype']}{t['shape']} {hashlib.sha256(body[start:end]).hexdigest()}"
    return tensors, metadata


def without(obj, keys=VOLATILE):
    """obj less every dict entry whose key is in `keys`, at any depth."""
    if isinstance(obj, dict):
        return {k: without(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [without(v, keys) for v in obj]
    return obj


def artifact_numbers(folder: Path) -> dict:
    tensors, metadata = safetensors_numbers(folder / "model.safetensors")
    numbers = {"tensors": tensors, "metadata": metadata, "config": json.loads((folder / "config.json").read_text())}
    if (folder / "compression.json").is_file():
        numbers["record"] = without(json.loads((folder / "compression.json").read_text()))
    return numbers


def onnx_numbers(path: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {}
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        inits[init.name] = f"{array.dtype}{list(array.shape)} {hashlib.sha256(array.tobytes()).hexdigest()}"

    def io(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return {"ops": [n.op_type for n in graph.node], "initializers": inits, "inputs": io(graph.input),
            "outputs": io(graph.output), "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}}


def bench_numbers(path: Path) -> dict:
    bench = json.loads(path.read_text())
    metrics = {k: v for k, v in bench["metrics"].items() if not k.startswith(("speedup", "realised"))}  # timed
    return {"models": without(bench["models"]), "accuracy": bench["accuracy"], "metrics": metrics,
            "latency_plan": bench.get("latency_plan")}


# ---------------------------------------------------------------- comparing

def flat(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in flat(value, f"{prefix}/{key}").items()} or {prefix: {}}
    if isinstance(obj, list):
        return {k: v for i, value in enumerate(obj) for k, v in flat(value, f"{prefix}[{i}]").items()} or {prefix: []}
    return {prefix: obj}


def compare(a_path: Path, b_path: Path) -> int:
    a, b = (json.loads(p.read_text()) for p in (a_path, b_path))
    for side, numbers in (("A", a), ("B", b)):
        print(f"{side}: {numbers['info'].get('code')}  ({numbers['info'].get('started')})")
    fa = flat({k: a.get(k) for k in COMPARED})
    fb = flat({k: b.get(k) for k in COMPARED})
    differences = 0
    for key in sorted(fa.keys() | fb.keys()):
        if fa.get(key, "<missing>") != fb.get(key, "<missing>"):
            differences += 1
            print(f"differs: {key}\n  A: {fa.get(key, '<missing>')}\n  B: {fb.get(key, '<missing>')}")
    if differences:
        print(f"{differences} differences")
        return 1
    tensors = sum(len(x["tensors"]) for x in a["artifacts"].values())
    inits = sum(len(x["initializers"]) for x in a["onnx"].values())
    print(f"identical: {tensors} tensors in {len(a['artifacts'])} artifacts, {len(a['plans'])} plan files, "
          f"{inits} ONNX initializers and {sum(len(x['ops']) for x in a['onnx'].values())} nodes, "
          f"{len(a['bench'])} bench record(s), {len(fa)} values in all; resumed == uninterrupted: "
          f"{a['resume']['g_equals_g_once']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
