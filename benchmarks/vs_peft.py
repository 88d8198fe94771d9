"""One fine-tuning step, lorasec against PyTorch + peft, on the same weights, batch and hyperparameters.

Run on demand (torch, transformers and peft are the optional ``bench`` group, never installed by default):

    uv sync --group bench && uv run python benchmarks/vs_peft.py            # CPU: MiniLM-L6 and a tiny BERT
    python benchmarks/vs_peft.py --models bert-base --dtype bfloat16       # GPU: a BERT-base-size encoder

or, with torch in another environment, ``--torch-python PATH`` (that Python needs torch, transformers, peft and
safetensors, not lorasec).

Workloads: batch 32; MiniLM-L6 (fetched, ``lorasec fetch minilm-l6``) at sequence 64; a tiny BERT (2 layers,
d 64, 4 heads, d_ff 256, BERT's 30,522-token vocabulary) at sequence 32, drawn once from a seed and written in
Hugging Face's layout, which both sides load; ``bert-base`` (12 layers, d 768, random weights) at sequence 128.
Mean pooling over the mask and a linear head; LoRA r 8, α 16 on query and value with the head trained (peft's
``modules_to_save``), or every weight (full fine-tuning); AdamW lr 1e-4, weight decay 0.01, no clipping; dropout
off unless ``--dropout`` (then BERT's placement on both sides: embeddings, attention probabilities, attention
and feed-forward outputs; none on the pooled features). Sentence lengths vary (padding masked) and are the same
on both sides.

Method: lorasec writes the head and LoRA A factors it drew; torch loads them, so both start from one state.
Before timing, each side trains ``--check`` steps on the same batches in its own process and the losses must
agree (to 2e-4 in float32, 2e-3 in a GPU's TF32, 3e-2 in bfloat16): it is the same workload, or the run stops. Then ``--repeats``
rounds, the side that goes first alternating, each side a fresh process timing ``--steps`` steps after
``--warmup``; lorasec is timed one step per call and, as its trainer runs, ``--per-dispatch`` steps per call
(``TrainStep.run``). The report gives medians over rounds of each process's median step, min and max, achieved
GFLOP/s (model FLOPs: forward, input gradients, and weight gradients of trained weights only, counted from the
shapes) against the float32 (or bfloat16) matmul peak measured through JAX in the same run, and the speed ratio
torch time / lorasec time (above 1: lorasec is faster). Both sides start with glibc's huge-page tunable, as the
``lorasec`` command does (``--huge-pages off`` to measure without: lorasec's single steps lose about a tenth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peak import matmul_peak

from lorasec.core import machine

BATCH = 32
MODELS = {  # name: (sequence length, architecture of a random BERT or None for the fetched MiniLM)
    "minilm": (64, None),
    "tiny": (32, dict(num_layers=2, d_model=64, num_heads=4, d_ff=256)),
    "bert-base": (128, dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072)),
}
RANK, ALPHA, LR, WEIGHT_DECAY = 8, 16.0, 1e-4, 0.01
TARGETS = ("query", "value")


# ----------------------------------------------------------------------------------------------- shared inputs
def _batches(count: int, seq_len: int, vocab: int, seed: int = 0):
    """``count`` batches of random token ids with lengths between half and all of ``seq_len`` ([CLS] first)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(seq_len // 2, seq_len + 1, BATCH)
        mask = np.arange(seq_len)[None, :] < lengths[:, None]
        tokens = np.where(mask, rng.integers(1000, vocab, (BATCH, seq_len)), 0).astype(np.int32)
        tokens[:, 0] = 101
        out.append({"tokens": tokens, "mask": mask, "labels": rng.integers(0, 2, BATCH).astype(np.int32)})
    return out


def _read_batches(path: Path) -> list[dict]:
    import numpy as np

    raw = np.load(path)
    count = raw["tokens"].shape[0]
    return [{k: raw[k][i] for k in ("tokens", "mask", "labels")} for i in range(count)]


# ----------------------------------------------------------------------------------------------- lorasec side
def _lorasec_config(model_dir: str, seq_len: int, method: str, dropout: float, dtype: str):
    from lorasec import config

    return config.from_dict(config.RunConfig, {
        "data": {"seq_len": seq_len},  # no data is read: the batches are the benchmark's own
        "model": {"pretrained": model_dir, "dropout": dropout, "attention_dropout": dropout, "head_dropout": 0.0},
        "adapter": {"method": method, "rank": RANK, "alpha": ALPHA, "targets": list(TARGETS)},
        "train": {"batch_size": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY, "grad_clip": 0.0,
                  "compute_dtype": dtype}}).validate()


def _lorasec_step(args):
    from lorasec.pipelines.run import prepare_step

    cfg = _lorasec_config(args.model_dir, args.seq_len, args.method, args.dropout, args.dtype)
    return prepare_step(cfg, dropout=args.dropout > 0)


def write_start(args) -> None:
    """The head and LoRA A factors lorasec drew, in torch's (out, in) layout, for the torch side to load."""
    import numpy as np

    from lorasec.adapters import lora

    model = _lorasec_step(args).model
    tensors = {"head.weight": np.asarray(model.head.kernel[...]).T, "head.bias": np.asarray(model.head.bias[...])}
    for name, layer in lora.lora_layers(model).items():
        index, part = name.split(".")[2], name.split(".")[-1]
        tensors[f"{index}.{part}.lora_A"] = np.asarray(layer.lora_a[...]).T
    np.savez(args.start, **tensors)


def lorasec_worker(args) -> dict:
    import jax
    import numpy as np

    step = _lorasec_step(args)
    batches = _read_batches(Path(args.batches))
    if args.losses:
        return {"losses": [float(step(batches[k % len(batches)])) for k in range(args.losses)]}
    out = {"xla_flops": step.flops(batches[0])}
    for k in range(args.warmup):
        step(batches[k % len(batches)]).block_until_ready()
    times = []
    for k in range(args.steps):
        began = time.perf_counter()
        step(batches[k % len(batches)]).block_until_ready()
        times.append(time.perf_counter() - began)
    out["step"] = times
    if args.per_dispatch > 1:
        group = [batches[k % len(batches)] for k in range(args.per_dispatch)]
        stacked = {name: np.stack([b[name] for b in group]) for name in group[0]}
        stacked = jax.device_put(stacked)
        step.run(stacked).block_until_ready()
        times = []
        for _ in range(max(3, args.steps // args.per_dispatch)):
            began = time.perf_counter()
            step.run(stacked).block_until_ready()
            times.append((time.perf_counter() - began) / args.per_dispatch)
        out["dispatch"] = times
    out["compilations"] = step.compilations
    return out


# ----------------------------------------------------------------------------------------------- torch side
def torch_worker(args) -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    torch.manual_seed(0)
    device = "cuda" if args.device == "gpu" else "cpu"
    # JAX multiplies float32 on a GPU in TF32 by default; torch does not unless asked: the same arithmetic here.
    torch.backends.cuda.matmul.allow_tf32 = True

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = BertModel.from_pretrained(args.model_dir, add_pooling_layer=False,
                                                     hidden_dropout_prob=args.dropout,
                                                     attention_probs_dropout_prob=args.dropout)
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, 2)

        def forward(self, tokens, mask):
            hidden = self.encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return self.head((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0))

    start = np.load(args.start)
    model = Classifier()
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(start["head.weight"]))
        model.head.bias.copy_(torch.from_numpy(start["head.bias"]))
    if args.method == "lora":
        model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS),
                                                 modules_to_save=["head"], lora_dropout=0.0))
        with torch.no_grad():
            for i, layer in enumerate(model.base_model.model.encoder.encoder.layer):
                for part in TARGETS:
                    getattr(layer.attention.self, part).lora_A["default"].weight.copy_(
                        torch.from_numpy(start[f"{i}.{part}.lora_A"]))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                                  weight_decay=WEIGHT_DECAY)
    batches = [{k: torch.from_numpy(np.asarray(v, np.int64)).to(device) for k, v in b.items()}
               for b in _read_batches(Path(args.batches))]
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(batch["tokens"], batch["mask"])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        optimizer.step()
        return loss

    def wait():
        if device == "cuda":
            torch.cuda.synchronize()

    if args.losses:
        return {"losses": [float(step(batches[k % len(batches)])) for k in range(args.losses)]}
    for k in range(args.warmup):
        step(batches[k % len(batches)])
    wait()
    times = []
    for k in range(args.steps):
        began = time.perf_counter()
        step(batches[k % len(batches)])
        wait()
        times.append(time.perf_counter() - began)
    return {"step": times, "torch": torch.__version__, "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------- model FLOPs
def model_flops(arch: dict, seq_len: int, method: str) -> float:
    """FLOPs of one step from the shapes: forward, gradients of every activation (but the embeddings'), and
    gradients of the trained weights only (matrix products; attention's two batched products included)."""
    tokens, d, f, layers = BATCH * seq_len, arch["d_model"], arch["d_ff"], arch["num_layers"]
    linear = 4 * d * d + 2 * d * f  # per layer: query, key, value, attention output, intermediate, output
    attention = 2 * 2 * BATCH * seq_len * seq_len * d  # QKᵀ and PV per layer
    forward = layers * (2 * tokens * linear + attention) + 2 * BATCH * d * 2
    inputs = layers * (2 * tokens * linear + 2 * attention)
    if method == "full":
        return forward + inputs + layers * 2 * tokens * linear + 2 * BATCH * d * 2
    lora = layers * len(TARGETS) * 2 * tokens * RANK * (d + d)  # x A and (x A) B per adapted layer
    return forward + inputs + 3 * lora + 2 * BATCH * d * 2


# ----------------------------------------------------------------------------------------------- orchestration
def _spawn(python: str, side: str, args, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [python, __file__, "--worker", side, "--result", out, "--model-dir", args.model_dir,
               "--seq-len", str(args.seq_len), "--method", args.method, "--dropout", str(args.dropout),
               "--dtype", args.dtype, "--device", args.device, "--start", args.start, "--batches", args.batches,
               *extra]
    env = dict(os.environ)
    if args.huge_pages == "on":
        from lorasec.core.hugepages import environment

        env = environment(env) or env  # as the lorasec command runs; torch is measured in the same environment
    else:
        env["GLIBC_TUNABLES"] = ":".join(t for t in env.get("GLIBC_TUNABLES", "").split(":")
                                         if t and not t.startswith("glibc.malloc.hugetlb"))
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{side} worker failed ({' '.join(command)}):\n{done.stderr[-4000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def _prepare_model(name: str, work: Path) -> tuple[str, dict]:
    """The Hugging Face directory of ``name`` and its architecture (sizes)."""
    if MODELS[name][1] is None:
        from lorasec.data import fetch

        directory = fetch.fetch("minilm-l6")
        config = json.loads((directory / "config.json").read_text())
        return str(directory), {"num_layers": config["num_hidden_layers"], "d_model": config["hidden_size"],
                                "num_heads": config["num_attention_heads"], "d_ff": config["intermediate_size"],
                                "vocab_size": config["vocab_size"]}
    arch_fields = {**MODELS[name][1], "vocab_size": 30522}
    directory = work / name
    if not (directory / "model.safetensors").is_file():
        from flax import nnx

        from lorasec.core import keys
        from lorasec.models import Architecture
        from lorasec.models.hf_import import export
        from lorasec.models.transformer import TransformerEncoder

        arch = Architecture(kind="transformer", max_positions=512, dropout=0.1, pooling="mean", mlp_hidden=(),
                            type_vocab_size=2, **arch_fields)
        export(TransformerEncoder(arch, rngs=nnx.Rngs(params=keys.key(0, "params"))), arch, directory)
    return str(directory), arch_fields




def _summary(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)}


def compare(args, work: Path, torch_python: str, peak: float) -> list[dict]:
    rows = []
    for name in args.models:
        args.seq_len = MODELS[name][0]
        args.model_dir, arch = _prepare_model(name, work)
        with tempfile.TemporaryDirectory() as scratch:
            args.batches = str(Path(scratch) / "batches.npz")
            import numpy as np

            batches = _batches(max(args.per_dispatch, args.check, 4), args.seq_len, arch["vocab_size"])
            np.savez(args.batches, **{k: np.stack([b[k] for b in batches]) for k in batches[0]})
            for method in args.methods:
                args.method = method
                args.start = str(Path(scratch) / f"start-{method}.npz")
                write_start(args)
                check = ["--losses", str(args.check)]
                ours = _spawn(sys.executable, "lorasec", args, check)["losses"]
                theirs = _spawn(torch_python, "torch", args, check)["losses"]
                gap = max(abs(a - b) for a, b in zip(ours, theirs))
                tolerance = {("cpu", "float32"): 2e-4, ("gpu", "float32"): 2e-3}.get((args.device, args.dtype), 3e-2)
                print(f"{name} {method}: first {args.check} losses, lorasec {[round(x, 5) for x in ours]}, "
                      f"torch {[round(x, 5) for x in theirs]}; largest gap {gap:.1e}", flush=True)
                if args.dropout == 0 and gap > tolerance:
                    sys.exit(f"not the same workload: losses differ by {gap:.2e} > {tolerance:g}")
                timing = ["--steps", str(args.steps), "--warmup", str(args.warmup),
                          "--per-dispatch", str(args.per_dispatch)]
                runs = {"lorasec": [], "lorasec_dispatch": [], "torch": []}
                xla_flops = None
                for round_ in range(args.repeats):
                    for side in (("lorasec", "torch") if round_ % 2 == 0 else ("torch", "lorasec")):
                        result = _spawn(sys.executable if side == "lorasec" else torch_python, side, args, timing)
                        runs[side].append(statistics.median(result["step"]))
                        if side == "lorasec":
                            xla_flops = result["xla_flops"]
                            if "dispatch" in result:
                                runs["lorasec_dispatch"].append(statistics.median(result["dispatch"]))
                        else:
                            torch_version = result["torch"]
                flops = model_flops(arch, args.seq_len, method)
                row = {"model": name, "method": method, "seq_len": args.seq_len, "batch": BATCH,
                       "dtype": args.dtype, "dropout": args.dropout, "loss_gap": gap, "model_gflop": flops / 1e9,
                       "xla_gflop": xla_flops / 1e9 if xla_flops else None, "torch_version": torch_version}
                for side, times in runs.items():
                    if times:
                        row[side] = _summary(times)
                        row[side]["gflops"] = flops / statistics.median(times) / 1e9
                        row[side]["peak_fraction"] = flops / statistics.median(times) / peak
                row["speed_vs_torch"] = runs["torch"] and statistics.median(runs["torch"]) / statistics.median(
                    runs["lorasec"])
                if runs["lorasec_dispatch"]:
                    row["dispatch_speed_vs_torch"] = statistics.median(runs["torch"]) / statistics.median(
                        runs["lorasec_dispatch"])
                rows.append(row)
                print(_table([row], peak, header=False), flush=True)
    return rows


def _table(rows: list[dict], peak: float, header: bool = True) -> str:
    lines = []
    if header:
        lines += ["| step | torch + peft | lorasec | lorasec, several steps per call | speed vs torch "
                  "(one step / several) | lorasec GFLOP/s (of peak) | torch GFLOP/s (of peak) |",
                  "|---|---|---|---|---|---|---|"]
    for r in rows:
        def cell(side):
            s = r.get(side)
            return "—" if not s else f"{s['median_ms']:.1f} ms ({s['min_ms']:.1f}–{s['max_ms']:.1f})"

        disp = f" / {r['dispatch_speed_vs_torch']:.2f}×" if r.get("dispatch_speed_vs_torch") else ""
        lines.append(f"| {r['model']} {r['method']} ({r['dtype']}) | {cell('torch')} | {cell('lorasec')} | "
                     f"{cell('lorasec_dispatch')} | {r['speed_vs_torch']:.2f}×{disp} | "
                     f"{r['lorasec']['gflops']:.0f} ({100 * r['lorasec']['peak_fraction']:.0f}%) | "
                     f"{r['torch']['gflops']:.0f} ({100 * r['torch']['peak_fraction']:.0f}%) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,tiny", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of fresh processes per side")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--per-dispatch", type=int, default=25, help="lorasec steps per call in its scan timing")
    parser.add_argument("--check", type=int, default=5, help="steps whose losses must agree before timing")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--huge-pages", choices=("on", "off"), default="on",
                        help="start both sides with glibc's huge-page tunable, as the lorasec command does "
                             "(lorasec.core.hugepages)")
    parser.add_argument("--work", default="runs/vs_peft", help="where the random BERTs are written once")
    parser.add_argument("--out", default=None, help="JSON of the results (default: WORK/results-DEVICE.json)")
    # worker arguments
    parser.add_argument("--worker", choices=("lorasec", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--result", "--model-dir", "--method", "--start", "--batches", "--device"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--losses", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (lorasec_worker if args.worker == "lorasec" else torch_worker)(args)
        Path(args.result).write_text(json.dumps(result))
        return
    if args.peak:
        print(json.dumps({"peak": matmul_peak(args.dtype)}))
        return
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"--models: {unknown[0]!r} is not one of {', '.join(MODELS)}")
    args.models, args.methods = args.models.split(","), args.methods.split(",")
    if any(m not in ("lora", "full") for m in args.methods):
        parser.error("--methods: lora, full or both")
    import jax

    args.device = "gpu" if jax.default_backend() == "gpu" else "cpu"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    peak_run = subprocess.run([sys.executable, __file__, "--peak", "--dtype", args.dtype], capture_output=True,
                              text=True, check=True)
    peak = json.loads(peak_run.stdout.strip().splitlines()[-1])["peak"]
    print(f"{jax.devices()[0].device_kind} ({machine.processor()}): {args.dtype} matmul peak through JAX "
          f"{peak / 1e9:.0f} GFLOP/s; huge pages {args.huge_pages}", flush=True)
    rows = compare(args, work, args.torch_python, peak)
    print("\n" + _table(rows, peak))
    out = Path(args.out or work / f"results-{args.device}.json")
    out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "processor": machine.processor(),
                               "peak_flops": peak, "huge_pages": args.huge_pages, "rows": rows}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
