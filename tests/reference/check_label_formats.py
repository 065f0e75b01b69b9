"""Checks that the readers the README names get class indices from sclip's masks.

Segments a fixture photo with --label-format palette and grey, then reads both masks with every
reader installed among OpenCV, PIL, NumPy (through PIL) and torchvision, and compares each
reading with PIL's of the paletted mask, the indices tests/masks_and_pipes.rs reads back. A reader that is expected to give colours (OpenCV on the paletted mask) is
checked to do so, since the README says it. Not part of `cargo test`: run it by hand after
`cargo build --release`, from the repository root:

    python3 tests/reference/check_label_formats.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCLIP = ROOT / "target" / "release" / "sclip"
FIXTURES = ROOT / "tests" / "fixtures"


def segment(photo: Path, out: Path, label_format: str) -> Path:
    subprocess.run(
        [SCLIP, "segment", photo, "--model", FIXTURES / "model", "--classes",
         "person,sky|space,wall", "--short-side", "112", "--window", "112", "--stride", "56",
         "--label-format", label_format, "--quiet", "--out", out],
        check=True,
    )
    return out / f"{photo.stem}.png"


def main() -> int:
    photo = FIXTURES / "images" / "astronaut.jpg"
    failures = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        palette = segment(photo, scratch / "palette", "palette")
        grey = segment(photo, scratch / "grey", "grey")
        indices = np.array(Image.open(palette))
        assert indices.ndim == 2 and len(np.unique(indices)) > 1, "a mask with several classes"

        def expect(reader: str, got: np.ndarray, want_indices: bool = True) -> None:
            same = got.shape == indices.shape and bool((got == indices).all())
            ok = same if want_indices else not same
            print(f"{'ok  ' if ok else 'FAIL'} {reader}: {got.shape} {got.dtype}")
            if not ok:
                failures.append(reader)

        expect("PIL Image.open(palette)", np.array(Image.open(palette)))
        expect("PIL Image.open(grey)", np.array(Image.open(grey)))
        try:
            import cv2
        except ImportError:
            print("skip OpenCV: not installed")
        else:
            expect("cv2.imread(grey, IMREAD_UNCHANGED)", cv2.imread(str(grey), cv2.IMREAD_UNCHANGED))
            expect("cv2.imread(palette, IMREAD_UNCHANGED) gives colours, not indices",
                   cv2.imread(str(palette), cv2.IMREAD_UNCHANGED), want_indices=False)
        try:
            from torchvision.io import ImageReadMode, read_image
        except ImportError:
            print("skip torchvision: not installed")
        else:
            for mask in (palette, grey):
                expect(f"torchvision read_image({mask.parent.name})", read_image(str(mask))[0].numpy())
            expect("torchvision read_image(grey, GRAY)",
                   read_image(str(grey), ImageReadMode.GRAY)[0].numpy())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
