#!/usr/bin/env python3
"""Side-by-side speed and memory of the `sclip` binary and the PyTorch reference (sclip_ref.py).

Both run in one session, on the same photo, classes, model and thread count, and every figure
is measured here (nothing is hard-coded). The machines this runs on are often shared, noisy and
throttle after about a minute of load, so whole-process runs are interleaved (sclip, reference,
sclip, reference, ...) and every figure is a median.

What it measures, and the targets it reports against:

1. Vision forward per 224x224 window, batch 1 and batch 6. Target: sclip at least as fast.
   PyTorch: `VisionTower.features` (all layers, CSA last, post-LN, projection, L2 norm) on a
   random normalised tensor, in this process. sclip: the vision stage of its speed bench
   (`--sclip-bench`, the executable `cargo bench --bench speed --no-run` names), run as a
   process between the PyTorch rounds so that both see the same clock.
2. Cold whole process, one photo, classes "dog,boat,water", wall time from spawn to exit:
   `sclip segment PHOTO --classes ... --model MODEL --out TMP --json --quiet` with an empty
   text cache (SCLIP_CACHE_DIR = a fresh empty folder every run) vs
   `python sclip_ref.py PHOTO --classes ... --model MODEL --threads T` (interpreter start and
   imports included). Target: sclip >= 3x faster.
3. Warm per-image cost: sclip on a folder of N copies of the photo with a warm text cache,
   `seconds / ok` from its JSON summary, vs the reference's preprocess + vision + postprocess
   from the `timing` lines of its runs in 2. Target: sclip >= 1.2x faster.
4. Text queries for the voc21 preset (21 classes, every name x 80 templates), cold: sclip's
   `text.seconds` from the summary of `sclip segment PHOTO --preset voc21` with an empty cache
   vs `TextEncoder.name_queries(names, templates, trim=False)` (prompts padded to 77, as SCLIP's
   authors do) in this process; trim=True is reported too. The reference text tower at one
   thread takes minutes for all names, so by default it runs on an evenly spaced subset of the
   names and is scaled to all of them by prompt count (the cost per prompt does not depend on
   the name when padded to 77); `--text-names 0` runs every name. Target: >= 4x faster than
   padded.
5. Peak RSS of the cold single-photo runs of 2: sclip's `peak_rss_mib` (VmHWM) from its JSON
   summary, the reference's from wait4()'s rusage. Target: sclip <= 1.5 GB.

Threads: RAYON_NUM_THREADS=T for sclip; `--threads T` plus OMP/MKL_NUM_THREADS=T for the
reference process, torch.set_num_threads(T) in this one. sclip also decodes and writes images on
small threads of its own beside the rayon pool; `--pin` restricts both programs to T CPUs so
that neither can use more cores than the other.

Run from the repository root (needs the release binary and the reference's venv):

    cargo build --release
    /path/to/venv/bin/python tests/reference/bench_vs_pytorch.py --image photo.jpg

Default counts take roughly 5 to 10 minutes at one thread; `--runs 1 --folder-images 4` is a
quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# The reference processes besides the authors' padded text.
REFERENCE_VARIANTS = {
    "padded": (),
    "trimmed": ("--trim-text",),
    "trimmed bf16": ("--trim-text", "--bf16"),
}
COLD_BF16_SPEEDUP = 3.0
WINDOW_GFLOP = 35.2  # ViT-B/16 on a 224x224 window, CSA last block, multiply+add = 2 FLOP
CLASSES = "dog,boat,water"
PRESET = "voc21"
COLD_SPEEDUP = 2.5  # against the trimmed reference
WARM_SPEEDUP = 1.2
TEXT_SPEEDUP = 4.0
TEXT_TRIMMED_SPEEDUP = 3.0
RSS_LIMIT_MIB = 1.5e9 / 2**20  # 1.5 GB = 1430.5 MiB


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

@dataclass
class Process:
    wall: float
    maxrss_mib: float
    stdout: str
    stderr: str


def run_process(cmd: Sequence[str], env: Dict[str, str], cpus: Optional[List[int]]) -> Process:
    """Runs cmd to completion; wall time from spawn to reaped exit, peak RSS from wait4()."""
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, preexec_fn=preexec)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if child.returncode != 0:
        raise BenchError(
            f"command failed with exit status {child.returncode}:\n  {shlex.join(cmd)}\n"
            f"--- stdout ---\n{stdout[-4000:]}--- stderr ---\n{stderr[-4000:]}")
    return Process(wall, usage.ru_maxrss / 1024.0, stdout, stderr)


def sclip_summary(proc: Process, cmd: Sequence[str]) -> dict:
    """The `{"type":"summary",...}` object that ends `--json` output."""
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "summary":
            if not obj.get("ok") or obj.get("failed"):
                raise BenchError(f"sclip segmented nothing or failed: {line}\n  {shlex.join(cmd)}\n"
                                 f"--- stderr ---\n{proc.stderr[-4000:]}")
            return obj
    raise BenchError(f"no JSON summary from sclip:\n  {shlex.join(cmd)}\n--- stdout ---\n"
                     f"{proc.stdout[-4000:]}--- stderr ---\n{proc.stderr[-4000:]}")


TIMING = re.compile(r"^timing (\w+) ([0-9.eE+-]+)s$")


def reference_timings(proc: Process) -> Dict[str, float]:
    t = {m.group(1): float(m.group(2))
         for m in map(TIMING.match, proc.stdout.splitlines()) if m}
    missing = {"preprocess", "vision", "postprocess"} - set(t)
    if missing:
        raise BenchError(f"reference printed no timing for {sorted(missing)}:\n{proc.stdout}")
    return t


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_runs(xs: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    return ", ".join(f"{x:.{digits}f}" for x in xs) + f" {unit}"


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------

@dataclass
class Row:
    measure: str
    sclip: Optional[float]
    reference: Optional[float]
    unit: str
    target: Optional[float] = None  # minimum reference/sclip ratio
    limit: Optional[float] = None   # maximum sclip value
    note: str = ""
    sclip_extra: str = ""
    reference_extra: str = ""


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: str
    cpus: Optional[List[int]]
    rows: List[Row] = field(default_factory=list)
    _counter: int = 0

    # ---- environment and commands ------------------------------------------

    def fresh_dir(self, what: str) -> str:
        self._counter += 1
        path = os.path.join(self.tmp, f"{what}-{self._counter}")
        os.makedirs(path)
        return path

    def sclip_env(self, cache_dir: str) -> Dict[str, str]:
        env = dict(os.environ)
        env["RAYON_NUM_THREADS"] = str(self.args.threads)
        env["SCLIP_CACHE_DIR"] = cache_dir
        return env

    def reference_env(self) -> Dict[str, str]:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.args.threads)
        env["HF_HUB_OFFLINE"] = "1"
        return env

    def sclip_cmd(self, inputs: str, out: str, *selection: str) -> List[str]:
        return [self.args.sclip, "segment", inputs, *selection, "--model", self.args.model,
                "--out", out, "--json", "--quiet"]

    def reference_cmd(self, *variant: str) -> List[str]:
        """The reference as a process; `variant`: `--trim-text` (what a competent PyTorch user
        writes), `--bf16` (under CPU autocast), or nothing (the authors' padded text)."""
        return [sys.executable, os.path.join(HERE, "sclip_ref.py"), self.args.image,
                "--classes", CLASSES, "--model", self.args.model,
                "--threads", str(self.args.threads), *variant]

    def show(self, label: str, cmd: Sequence[str], env_note: str) -> None:
        print(f"  {label}: {env_note} {shlex.join(cmd)}", flush=True)

    def run_sclip(self, inputs: str, cache_dir: str, *selection: str) -> dict:
        cmd = self.sclip_cmd(inputs, self.fresh_dir("out"), *selection)
        proc = run_process(cmd, self.sclip_env(cache_dir), self.cpus)
        summary = sclip_summary(proc, cmd)
        summary["_wall"] = proc.wall
        summary["_maxrss_mib"] = proc.maxrss_mib
        return summary

    # ---- 2, 3, 5: whole processes ------------------------------------------

    def processes(self) -> None:
        a = self.args
        runs = a.runs
        folder = self.fresh_dir("folder")
        ext = os.path.splitext(a.image)[1] or ".jpg"
        for i in range(a.folder_images):
            shutil.copyfile(a.image, os.path.join(folder, f"photo{i:03d}{ext}"))
        warm_cache = self.fresh_dir("warm-cache")

        print(f"\n[2,3,5] whole processes, {runs} interleaved run(s) each", flush=True)
        if not a.reference_only:
            self.show("sclip cold", self.sclip_cmd(a.image, "OUT", "--classes", CLASSES),
                      f"RAYON_NUM_THREADS={a.threads} SCLIP_CACHE_DIR=<fresh empty dir>")
            self.show("sclip warm", self.sclip_cmd(folder, "OUT", "--classes", CLASSES),
                      f"RAYON_NUM_THREADS={a.threads} SCLIP_CACHE_DIR=<warmed dir>")
        for variant in REFERENCE_VARIANTS.values():
            self.show("reference ", self.reference_cmd(*variant),
                      f"OMP_NUM_THREADS={a.threads} MKL_NUM_THREADS={a.threads}")
        print(f"  ({a.folder_images} copies of the photo in {folder})", flush=True)

        if not a.reference_only:
            s = self.run_sclip(a.image, warm_cache, "--classes", CLASSES)
            print(f"  warm-up: sclip filled the text cache (text {s['text'].get('cache')}, "
                  f"{s['_wall']:.2f} s)", flush=True)

        cold, cold_rss, cold_text, cold_setup = [], [], [], []
        cold_bf16: List[float] = []
        ref_cold: Dict[str, List[float]] = {name: [] for name in REFERENCE_VARIANTS}
        warm, warm_wall, warm_setup = [], [], []
        ref_wall, ref_rss, ref_image, ref_t = [], [], [], []
        for r in range(runs):
            if not a.reference_only:
                s = self.run_sclip(a.image, self.fresh_dir("cold-cache"), "--classes", CLASSES)
                if s["text"].get("cache") != "miss":
                    raise BenchError(f"cold sclip run did not miss the text cache: {s['text']}")
                cold.append(s["_wall"])
                rss = s.get("peak_rss_mib")
                cold_rss.append(float(rss) if rss is not None else s["_maxrss_mib"])
                cold_text.append(float(s["text"]["seconds"]))
                cold_setup.append(float(s["setup_seconds"]))
                print(f"  run {r + 1}/{runs} sclip cold:     {s['_wall']:.3f} s wall, setup "
                      f"{cold_setup[-1]:.3f} s (text {cold_text[-1]:.3f} s, miss), peak "
                      f"{cold_rss[-1]:.0f} MiB (wait4: {s['_maxrss_mib']:.0f} MiB)", flush=True)

                s = self.run_sclip(a.image, self.fresh_dir("cold-cache"), "--classes", CLASSES,
                                   "--dtype", "bf16")
                cold_bf16.append(s["_wall"])
                print(f"  run {r + 1}/{runs} sclip cold bf16: {s['_wall']:.3f} s wall", flush=True)

            for name, variant in REFERENCE_VARIANTS.items():
                if name == "padded":
                    continue
                proc = run_process(self.reference_cmd(*variant), self.reference_env(), self.cpus)
                ref_cold[name].append(proc.wall)
                t = reference_timings(proc)
                print(f"  run {r + 1}/{runs} reference cold, {name}: {proc.wall:.3f} s wall "
                      f"(import_libs {t.get('import_libs', 0):.2f}, text {t['text']:.2f}, "
                      f"vision {t['vision']:.2f})", flush=True)

            proc = run_process(self.reference_cmd(), self.reference_env(), self.cpus)
            ref_cold["padded"].append(proc.wall)
            t = reference_timings(proc)
            ref_wall.append(proc.wall)
            ref_rss.append(proc.maxrss_mib)
            ref_image.append(t["preprocess"] + t["vision"] + t["postprocess"])
            ref_t.append(t)
            stages = " ".join(f"{k} {v:.2f}" for k, v in t.items() if k != "total")
            print(f"  run {r + 1}/{runs} reference cold: {proc.wall:.3f} s wall ({stages}), "
                  f"peak {proc.maxrss_mib:.0f} MiB", flush=True)

            if not a.reference_only:
                s = self.run_sclip(folder, warm_cache, "--classes", CLASSES)
                if s["text"].get("cache") != "hit":
                    raise BenchError(f"warm sclip run did not hit the text cache: {s['text']}")
                warm.append(float(s["seconds"]) / int(s["ok"]))
                warm_wall.append(s["_wall"])
                warm_setup.append(float(s["setup_seconds"]))
                print(f"  run {r + 1}/{runs} sclip warm:     {s['ok']} images in "
                      f"{float(s['seconds']):.3f} s = {warm[-1]:.3f} s/image "
                      f"(setup {warm_setup[-1]:.3f} s, {s['_wall']:.3f} s wall)", flush=True)

        ref_text = median([t["text"] for t in ref_t])
        self.rows.append(Row(
            "cold process, 1 photo, 3 classes, vs trimmed", median(cold) if cold else None,
            median(ref_cold["trimmed"]), "s", target=COLD_SPEEDUP,
            sclip_extra=f"text {median(cold_text):.2f}" if cold_text else ""))
        self.rows.append(Row(
            "cold process, 1 photo, 3 classes, vs padded", median(cold) if cold else None,
            median(ref_wall), "s",
            sclip_extra=f"text {median(cold_text):.2f}" if cold_text else "",
            reference_extra=f"text {ref_text:.2f}"))
        self.rows.append(Row(
            "cold process, bf16 vs trimmed under autocast", median(cold_bf16) if cold_bf16 else None,
            median(ref_cold["trimmed bf16"]), "s", target=COLD_BF16_SPEEDUP))
        self.rows.append(Row(
            f"warm per image ({a.folder_images}-image folder)", median(warm) if warm else None,
            median(ref_image), "s", target=WARM_SPEEDUP,
            note="reference: preprocess+vision+postprocess of its cold runs"))
        self.rows.append(Row(
            "peak RSS, cold 1-photo run", median(cold_rss) if cold_rss else None, median(ref_rss),
            "MiB", limit=RSS_LIMIT_MIB))

    # ---- in-process reference ----------------------------------------------

    def load_reference(self):
        # Threads before torch's first parallel region; env vars before its import.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(self.args.threads)
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        import torch

        torch.set_num_threads(self.args.threads)
        sys.path.insert(0, HERE)
        import sclip_ref

        t0 = time.perf_counter()
        ref = sclip_ref.SclipReference(self.args.model)
        print(f"\nreference loaded in this process in {time.perf_counter() - t0:.2f} s "
              f"(torch {torch.__version__}, {torch.get_num_threads()} thread(s))", flush=True)
        return torch, ref

    # ---- 4: text queries ---------------------------------------------------

    def voc_names(self) -> List[str]:
        """Every name of the voc21 preset, from `sclip presets voc21`."""
        if self.args.reference_only:
            path = os.path.join(REPO, "assets", "presets", f"{PRESET}.txt")
            print(f"  (--reference-only: {PRESET} class names read from {path})")
            with open(path, encoding="utf-8") as f:
                text = f.read()
        else:
            cmd = [self.args.sclip, "presets", PRESET]
            text = run_process(cmd, dict(os.environ), None).stdout
        names = []
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            names.extend(n.strip() for n in line.split(",") if n.strip())
        if not names:
            raise BenchError(f"no class names in the {PRESET} class file:\n{text}")
        return names

    def text(self, torch, ref) -> None:
        a = self.args
        names = self.voc_names()
        subset = names
        if 0 < a.text_names < len(names):
            step = len(names) / a.text_names
            subset = [names[int(i * step)] for i in range(a.text_names)]
        scale = len(names) / len(subset)
        templates = ref.templates
        prompts = len(names) * len(templates)
        print(f"\n[4] text queries, {PRESET}: {len(names)} names x {len(templates)} templates = "
              f"{prompts} prompts, cold", flush=True)
        if not a.reference_only:
            self.show("sclip", self.sclip_cmd(a.image, "OUT", "--preset", PRESET),
                      f"RAYON_NUM_THREADS={a.threads} SCLIP_CACHE_DIR=<fresh empty dir>")
        print(f"  reference: TextEncoder.name_queries(names, templates, trim=False|True) in this "
              f"process, on {len(subset)} of the {len(names)} names "
              f"({len(subset) * len(templates)} prompts), scaled x{scale:.3f} by prompt count",
              flush=True)
        if len(subset) < len(names):
            print(f"  reference names: {', '.join(subset)}", flush=True)
        # Lazy tokenizer set-up and first-call costs are left out of the reference's figures.
        ref.text.name_queries(subset[:1], templates[:2], trim=True)
        ref.text.name_queries(subset[:1], templates[:2], trim=False)

        sclip_s, padded, trimmed = [], [], []
        for r in range(max(a.runs, a.text_runs)):
            if r < a.runs and not a.reference_only:
                s = self.run_sclip(a.image, self.fresh_dir("voc-cache"), "--preset", PRESET)
                if s["text"].get("cache") != "miss":
                    raise BenchError(f"cold sclip run did not miss the text cache: {s['text']}")
                if int(s["text"].get("names", len(names))) != len(names):
                    print(f"  warning: sclip encoded {s['text'].get('names')} names, "
                          f"`sclip presets {PRESET}` lists {len(names)}", flush=True)
                sclip_s.append(float(s["text"]["seconds"]))
                print(f"  run {r + 1} sclip:     text {sclip_s[-1]:.3f} s "
                      f"({s['text'].get('names')} names, {s['_wall']:.2f} s wall)", flush=True)
            if r < a.text_runs:
                for trim, out in ((False, padded), (True, trimmed)):
                    t0 = time.perf_counter()
                    ref.text.name_queries(subset, templates, trim=trim)
                    dt = time.perf_counter() - t0
                    out.append(dt * scale)
                    print(f"  run {r + 1} reference: trim={trim} {dt:.3f} s for {len(subset)} "
                          f"names -> {dt * scale:.3f} s for {len(names)}", flush=True)

        sclip_text = median(sclip_s) if sclip_s else None
        note = "" if scale == 1 else f"reference scaled from {len(subset)}/{len(names)} names"
        self.rows.append(Row(f"text {PRESET} cold vs padded to 77", sclip_text, median(padded),
                             "s", target=TEXT_SPEEDUP, note=note))
        self.rows.append(Row(f"text {PRESET} cold vs trimmed", sclip_text, median(trimmed), "s",
                             target=TEXT_TRIMMED_SPEEDUP, note=note))

    # ---- 1: vision forward per window ----------------------------------------

    def sclip_bench_cmd(self) -> List[str]:
        """The speed bench's vision stage, as a command."""
        return [os.path.abspath(self.args.sclip_bench), "--bench", "vision"]

    def sclip_windows(self) -> Dict[Tuple[str, int], float]:
        """Seconds per window per (dtype, batch), f32 and bf16 at batch 1 and 6, from one run of
        the bench's vision stage."""
        env = dict(os.environ)
        env["RAYON_NUM_THREADS"] = str(self.args.threads)
        env["SCLIP_BENCH_MODEL"] = self.args.model
        cmd = self.sclip_bench_cmd()
        proc = run_process(cmd, env, self.cpus)
        figures = {(dtype, int(batch)): float(seconds) for dtype, batch, seconds in
                   re.findall(r"(f32|bf16) batch (\d+): ([0-9.]+) s per window", proc.stdout)}
        if set(figures) != {(d, b) for d in ("f32", "bf16") for b in (1, 6)}:
            raise BenchError(f"no f32 and bf16 batch 1 and 6 figures from {shlex.join(cmd)}:\n"
                             f"{proc.stdout}")
        return figures

    def vision(self, torch, ref) -> None:
        a = self.args
        print(f"\n[1] vision forward per 224x224 window, {a.vision_rounds} interleaved rounds: "
              f"reference.vision.features(x) on random Bx3x224x224 in f32 and under "
              f"torch.autocast('cpu', torch.bfloat16), median of {a.vision_runs} after one warm-up "
              f"per round", flush=True)
        keys = [(dtype, batch) for dtype in ("f32", "bf16") for batch in (1, 6)]
        sclip_rounds: Dict[Tuple[str, int], List[float]] = {k: [] for k in keys}
        reference_rounds: Dict[Tuple[str, int], List[float]] = {k: [] for k in keys}
        if a.sclip_bench:
            self.show("sclip", self.sclip_bench_cmd(),
                      f"RAYON_NUM_THREADS={a.threads} SCLIP_BENCH_MODEL={a.model}")
        gen = torch.Generator().manual_seed(0)
        inputs = {batch: torch.randn(batch, 3, 224, 224, generator=gen) for batch in (1, 6)}
        for r in range(a.vision_rounds):
            if a.sclip_bench:
                for key, seconds in self.sclip_windows().items():
                    sclip_rounds[key].append(seconds)
                print(f"  round {r + 1} sclip:     " + ", ".join(
                    f"{d} batch {b} {sclip_rounds[(d, b)][-1]:.3f} s" for d, b in keys), flush=True)
            for dtype, batch in keys:
                x = inputs[batch]
                per_window = []
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=dtype == "bf16"):
                    ref.vision.features(x, csa=True)
                    for _ in range(a.vision_runs):
                        t0 = time.perf_counter()
                        ref.vision.features(x, csa=True)
                        per_window.append((time.perf_counter() - t0) / batch)
                reference_rounds[(dtype, batch)].append(median(per_window))
            print(f"  round {r + 1} reference: " + ", ".join(
                f"{d} batch {b} {reference_rounds[(d, b)][-1]:.3f} s" for d, b in keys), flush=True)
        for dtype, batch in keys:
            m = median(reference_rounds[(dtype, batch)])
            runs = sclip_rounds[(dtype, batch)]
            s = median(runs) if runs else None
            self.rows.append(Row(
                f"vision forward / window, {dtype}, batch {batch}", s, m, "s", target=1.0,
                sclip_extra=f"{WINDOW_GFLOP / s:.1f} GFLOP/s" if s else "",
                reference_extra=f"{WINDOW_GFLOP / m:.1f} GFLOP/s",
                note="" if s else "sclip: pass --sclip-bench EXE"))

    # ---- table -------------------------------------------------------------

    def table(self) -> str:
        head = ("measure", "sclip", "reference", "ratio", "target", "verdict")
        lines = []
        for r in self.rows:
            def cell(v, extra):
                if v is None:
                    return "-"
                s = f"{v:.0f} {r.unit}" if r.unit == "MiB" else f"{v:.3f} {r.unit}"
                return f"{s} ({extra})" if extra else s

            ratio = (r.reference / r.sclip) if (r.sclip and r.reference) else None
            if r.target is not None:
                target = f">= {r.target:g}x faster"
                verdict = "-" if ratio is None else ("met" if ratio >= r.target else "NOT met")
            elif r.limit is not None:
                target = f"sclip <= 1.5 GB ({r.limit:.0f} MiB)"
                verdict = "-" if r.sclip is None else ("met" if r.sclip <= r.limit else "NOT met")
            else:
                target, verdict = "(report)", "-"
            if r.unit == "MiB":
                ratio_s = "-" if ratio is None else f"{1 / ratio:.2f}x ref"
            else:
                ratio_s = "-" if ratio is None else f"{ratio:.2f}x"
            lines.append((r.measure, cell(r.sclip, r.sclip_extra),
                          cell(r.reference, r.reference_extra), ratio_s, target, verdict))
        widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
               "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        notes = [f"  {r.measure}: {r.note}" for r in self.rows if r.note]
        out.append("ratio = reference / sclip (times: how many times faster sclip is; "
                   "memory: sclip's peak as a multiple of the reference's)")
        if notes:
            out.append("notes:")
            out += notes
        return "\n".join(out)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="sclip vs the PyTorch reference: cold process, warm per image, text "
                    "queries, vision forward, peak memory (medians of interleaved runs).")
    ap.add_argument("--image", required=True, help="photo to segment (e.g. a 448x336 JPEG)")
    ap.add_argument("--sclip", default=os.path.join(REPO, "target", "release", "sclip"),
                    help="sclip binary [default: target/release/sclip]")
    ap.add_argument("--model", default=os.path.join(REPO, "models", "vit-b16-random"),
                    help="CLIP folder [default: models/vit-b16-random; make it with "
                         "make_fixtures.py --full-size]")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for both (RAYON_NUM_THREADS / torch) [default: 1]")
    ap.add_argument("--runs", type=int, default=3,
                    help="interleaved whole-process runs of each command [default: 3]")
    ap.add_argument("--folder-images", type=int, default=8,
                    help="copies of the photo in the warm-cache folder run [default: 8]")
    ap.add_argument("--text-runs", type=int, default=1,
                    help="runs of the reference's text queries (each padded + trimmed) "
                         "[default: 1]")
    ap.add_argument("--text-names", type=int, default=6,
                    help="reference text on this many evenly spaced voc21 names, scaled to "
                         "all; 0 = every name (minutes at 1 thread) [default: 6]")
    ap.add_argument("--vision-runs", type=int, default=5,
                    help="timed reference vision forwards per batch size [default: 5]")
    ap.add_argument("--sclip-bench", metavar="EXE",
                    help="sclip's speed bench executable (`cargo bench --bench speed --no-run` "
                         "prints it); its vision stage runs interleaved with the reference's")
    ap.add_argument("--vision-rounds", type=int, default=3,
                    help="interleaved rounds of the vision forward comparison [default: 3]")
    ap.add_argument("--pin", action="store_true",
                    help="restrict both programs (and this process) to --threads CPUs")
    ap.add_argument("--parts", default="processes,text,vision",
                    help="comma-separated parts to run: processes (2, 3, 5), text (4), "
                         "vision (1) [default: all]")
    ap.add_argument("--reference-only", action="store_true",
                    help="measure only the PyTorch side (no sclip binary needed)")
    a = ap.parse_args(argv)
    counts = (a.threads, a.runs, a.folder_images, a.text_runs, a.vision_runs, a.vision_rounds)
    if min(counts) < 1 or a.text_names < 0:
        ap.error("counts must be positive (--text-names may be 0)")
    a.parts = {part.strip() for part in a.parts.split(",") if part.strip()}
    unknown = a.parts - {"processes", "text", "vision"}
    if unknown or not a.parts:
        ap.error(f"--parts: choose from processes, text, vision (got {', '.join(sorted(unknown))})")
    if a.sclip_bench and not os.access(a.sclip_bench, os.X_OK):
        ap.error(f"--sclip-bench: {a.sclip_bench} is not an executable "
                 "(cargo bench --bench speed --no-run prints its path)")
    for path, what in ((a.image, "--image"), (os.path.join(a.model, "config.json"), "--model")):
        if not os.path.isfile(path):
            ap.error(f"{what}: no such file {path}")
    if not a.reference_only and not os.access(a.sclip, os.X_OK):
        ap.error(f"--sclip: {a.sclip} is not an executable (cargo build --release)")
    a.image = os.path.abspath(a.image)
    a.model = os.path.abspath(a.model)
    a.sclip = os.path.abspath(a.sclip)
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = parse_args(argv)
    cpus = None
    if a.pin:
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < a.threads:
            raise SystemExit(f"--pin: only {len(allowed)} CPUs available for {a.threads} threads")
        cpus = allowed[:a.threads]
    started = time.perf_counter()
    print(f"sclip vs PyTorch reference: {a.threads} thread(s)"
          f"{f', pinned to CPUs {cpus}' if cpus else ''}; photo {a.image}; model {a.model}")
    if not a.reference_only:
        version = run_process([a.sclip, "--version"], dict(os.environ), None).stdout.strip()
        print(f"sclip: {a.sclip} ({version})")
    print(f"python: {sys.executable}")

    tmp = tempfile.mkdtemp(prefix="sclip-bench-")
    bench = Bench(a, tmp, cpus)
    try:
        if "processes" in a.parts:
            bench.processes()
        if a.parts & {"text", "vision"}:
            torch, ref = bench.load_reference()
            if "text" in a.parts:
                bench.text(torch, ref)
            if "vision" in a.parts:
                bench.vision(torch, ref)
    except BenchError as e:
        print(f"\nbench error: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nmedians ({a.runs} interleaved process run(s); {a.threads} thread(s); "
          f"{time.perf_counter() - started:.0f} s in all):\n")
    print(bench.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
