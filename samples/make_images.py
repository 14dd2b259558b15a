"""Regenerate samples/images/ (12 test images of the `shapes` data set), samples/masks/ and labels.csv.

python samples/make_images.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from attnviz.train.shapes import make_sample
from PIL import Image

HERE = Path(__file__).resolve().parent


def main(count: int = 12, seed: int = 0) -> None:
    (HERE / "images").mkdir(exist_ok=True)
    (HERE / "masks").mkdir(exist_ok=True)
    rows = []
    for index in range(count):
        sample = make_sample(index, seed=seed, split="test")
        name = f"{index:02d}_{sample.class_name}.png"
        Image.fromarray(sample.image).save(HERE / "images" / name)
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(HERE / "masks" / name)
        rows.append((name, sample.class_name))
    with open(HERE / "images" / "labels.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "label"])
        writer.writerows(rows)


if __name__ == "__main__":
    main()
