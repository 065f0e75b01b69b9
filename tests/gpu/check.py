#!/usr/bin/env python3
"""The GPU checks of a CUDA build of sclip, as one run on a machine with an NVIDIA GPU.

    python3 tests/gpu/check.py --sclip PATH/TO/sclip [--out DIR]

1. Agreement: every fixture case (tests/fixtures/cases.json) through the binary on the GPU in
   f32, f16 and bf16, against the same binary on the CPU in f32. Limits: f32 probabilities within
   1e-4 of the CPU's, f16 within 2e-2; bf16 is reported, not judged (its 8-bit mantissa is the
   user's trade). Label agreement with the CPU is printed beside each.
2. Speed: images/s on a folder of 64 photos at short side 336 (448x336: 6 windows each) with a
   full-size random-weight ViT-B/16 (made here by make_fixtures.py --full-size, reusing the fixture
   model's tokenizer.json so that open_clip is not needed), text cache warm, for f32/f16/bf16 and
   two batch sizes.

Needs python3 with numpy, torch, transformers, safetensors and opencv (the reference's packages).
It prints a report and writes it, with the raw figures as JSON, into --out. The exit status is 1
when a judged limit fails. `--device cpu` runs the same plumbing on a machine without a GPU.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
LIMITS = {"f32": 1e-4, "f16": 2e-2, "bf16": None}
SPEED_CLASSES = "dog,boat,water"


def read_label_png(path: Path) -> np.ndarray:
    """The label indices of a palette mask (OpenCV would expand the palette to colours)."""
    from PIL import Image

    with Image.open(path) as mask:
        return np.array(mask)


def case_args(case: dict, out: Path) -> list[str]:
    args = [
        "segment", str(FIXTURES / case["image"]),
        "--model", str(FIXTURES / "model"),
        "--logit-scale", str(case["logit_scale"]),
        "--prob-thd", str(case["prob_thd"]),
        "--short-side", str(case["short_side"]),
        "--window", str(case["window"]),
        "--stride", str(case["stride"]),
        "--out", str(out), "--save-probs", "--quiet",
    ]
    if case["classes_file"]:
        args += ["--classes-file", str(FIXTURES / case["classes_file"])]
    else:
        args += ["--classes", ",".join(case["classes"])]
    if case["area_thd"] is not None:
        args += ["--area-thd", str(case["area_thd"])]
    return args


class Checker:
    def __init__(self, a: argparse.Namespace, work: Path):
        self.a = a
        self.out = Path(a.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.env = dict(os.environ, SCLIP_CACHE_DIR=str(self.work / "cache"))
        self.lines: list[str] = []
        self.results: dict = {"agreement": [], "speed": []}
        self.failures: list[str] = []

    def say(self, line: str = ""):
        print(line, flush=True)
        self.lines.append(line)

    def sclip(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        run = subprocess.run([self.a.sclip, *args], env=self.env, capture_output=True, text=True, **kw)
        if run.returncode != 0:
            raise SystemExit(f"sclip {' '.join(args)} failed ({run.returncode}): {run.stderr.strip()}")
        return run

    def machine(self):
        self.say(f"sclip: {self.a.sclip}")
        for cmd in (["nvidia-smi", "-L"], ["nproc"]):
            try:
                self.say(f"{' '.join(cmd)}: " + subprocess.run(cmd, capture_output=True, text=True).stdout.strip())
            except FileNotFoundError:
                self.say(f"{cmd[0]}: not found")

    def agreement(self):
        cases = json.loads((FIXTURES / "cases.json").read_text())
        self.say()
        self.say(f"1. fixture cases: {self.a.device} vs cpu, f32 reference run on the CPU")
        self.say(f"{'case':<14} {'dtype':<5} {'max |prob diff|':>16} {'limit':>8} {'labels equal':>13}")
        for case in cases:
            cpu_out = self.work / "cpu" / case["name"]
            self.sclip(case_args(case, cpu_out) + ["--device", "cpu", "--dtype", "f32"])
            stem = Path(case["image"]).stem
            cpu_probs = np.load(cpu_out / f"{stem}.probs.npy")
            cpu_labels = read_label_png(cpu_out / f"{stem}.png")
            for dtype, limit in LIMITS.items():
                out = self.work / dtype / case["name"]
                self.sclip(case_args(case, out) + ["--device", self.a.device, "--dtype", dtype])
                probs = np.load(out / f"{stem}.probs.npy")
                labels = read_label_png(out / f"{stem}.png")
                if probs.shape != cpu_probs.shape or labels.shape != cpu_labels.shape:
                    raise SystemExit(f"{case['name']} {dtype}: shapes {probs.shape} vs {cpu_probs.shape}")
                diff = float(np.abs(probs.astype(np.float64) - cpu_probs).max())
                equal = float((labels == cpu_labels).mean())
                verdict = "" if limit is None or diff <= limit else "  FAIL"
                if verdict:
                    self.failures.append(f"{case['name']} {dtype}: max |prob diff| {diff:.2e} > {limit}")
                limit_text = "-" if limit is None else f"{limit:.0e}"
                self.say(f"{case['name']:<14} {dtype:<5} {diff:>16.2e} {limit_text:>8} {100 * equal:>12.3f}%{verdict}")
                self.results["agreement"].append(
                    dict(case=case["name"], dtype=dtype, max_prob_diff=diff, limit=limit, labels_equal=equal))

    def full_size_model(self) -> Path:
        if self.a.model:
            return Path(self.a.model)
        model = self.work / "vit-b16-random"
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "tests" / "reference" / "make_fixtures.py"),
                        "--full-size", str(model),
                        "--tokenizer", str(FIXTURES / "model" / "tokenizer.json")],
                       check=True, capture_output=True)
        self.say(f"made the full-size random ViT-B/16 in {time.perf_counter() - started:.1f} s")
        return model

    def photos(self) -> Path:
        """Smooth random scenes, 448x336, each different so that nothing can be reused."""
        import cv2

        folder = self.work / "photos"
        folder.mkdir()
        rng = np.random.default_rng(7)
        for i in range(self.a.images):
            small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
            photo = cv2.resize(small, (448, 336), interpolation=cv2.INTER_CUBIC)
            noise = rng.normal(0, 8, size=photo.shape)
            photo = np.clip(photo + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"photo{i:03d}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return folder

    def speed(self):
        self.say()
        self.say(f"2. speed: {self.a.images} photos of 448x336 (6 windows each), full-size ViT-B/16, "
                 f"--classes {SPEED_CLASSES}, text cache warm, {self.a.runs} runs each, best and median")
        model = self.full_size_model()
        folder = self.photos()
        base = ["segment", str(folder), "--model", str(model), "--classes", SPEED_CLASSES,
                "--json", "--quiet", "--device", self.a.device]
        self.sclip(base + ["--out", str(self.work / "warm-up"), "--batch-size", "8"])
        self.say(f"{'dtype':<5} {'batch':>5} {'images/s':>9} {'median':>8} {'setup s':>8} {'RSS MiB':>8}")
        for dtype, batch in self.a.speed_configs:
            rates, setups, rss = [], [], []
            for r in range(self.a.runs):
                run = self.sclip(base + ["--out", str(self.work / f"speed-{dtype}-{batch}-{r}"),
                                         "--dtype", dtype, "--batch-size", str(batch)])
                summary = json.loads(run.stdout.strip().splitlines()[-1])
                if summary.get("ok") != self.a.images:
                    raise SystemExit(f"speed run {dtype} b{batch}: {summary}")
                rates.append(float(summary["images_per_second"]))
                setups.append(float(summary["setup_seconds"]))
                rss.append(float(summary["peak_rss_mib"]))
            self.say(f"{dtype:<5} {batch:>5} {max(rates):>9.2f} {statistics.median(rates):>8.2f} "
                     f"{statistics.median(setups):>8.2f} {max(rss):>8.0f}")
            self.results["speed"].append(dict(dtype=dtype, batch_size=batch, images_per_second=rates,
                                              setup_seconds=setups, peak_rss_mib=rss))

    def finish(self) -> int:
        self.say()
        self.say("FAILED: " + "; ".join(self.failures) if self.failures else "all judged limits hold")
        (self.out / "gpu-check.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu-check.json").write_text(json.dumps(self.results, indent=1) + "\n")
        return 1 if self.failures else 0


def speed_config(text: str) -> tuple[str, int]:
    dtype, _, batch = text.partition(":")
    if dtype not in LIMITS or not batch.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected DTYPE:BATCH, e.g. f16:64")
    return dtype, int(batch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sclip", required=True, help="the sclip binary built with --features cuda")
    ap.add_argument("--out", default="gpu-check", help="where the report goes [default: gpu-check]")
    ap.add_argument("--device", default="cuda", help="device under test [default: cuda]")
    ap.add_argument("--model", help="a full-size CLIP folder for the speed part [default: make one]")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--speed-configs", type=speed_config, nargs="+",
                    default=[("f32", 8), ("f32", 64), ("f16", 64), ("bf16", 64)],
                    help="DTYPE:BATCH pairs [default: f32:8 f32:64 f16:64 bf16:64]")
    ap.add_argument("--parts", default="agreement,speed", help="agreement, speed or both")
    a = ap.parse_args()
    a.sclip = str(Path(a.sclip).resolve())

    with tempfile.TemporaryDirectory(prefix="sclip-gpu-") as work:
        checker = Checker(a, Path(work))
        checker.machine()
        parts = set(a.parts.split(","))
        if "agreement" in parts:
            checker.agreement()
        if "speed" in parts:
            checker.speed()
        return checker.finish()


if __name__ == "__main__":
    sys.exit(main())
