"""Is the input pipeline the bottleneck? Train-step time on real files vs on cached tensors.

Both runs train the same U-Net for the same number of steps in one process: once fed by
`kseg.data.folder_dataset` (PNG decode, remap, resize, cache, shuffle, joint augmentation
with elastic deformation, batching), once by the same batches materialized in memory
beforehand. ratio = real / cached; 1.0 means the input pipeline costs nothing.
Writes benchmarks/results/input_pipeline.json.

    python benchmarks/input_pipeline.py [--steps 40] [--data isbi|camvid]
"""

import argparse
import time

from common import print_table, require_shared, write_results


def timed_fit(model, dataset, steps):
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # trace + warm up
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--data", choices=("isbi", "camvid"), default="isbi")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import keras

    from kseg.data import Augment, find_pairs, folder_dataset
    from kseg.losses import SparseCrossEntropy
    from kseg.models import UNet

    if args.data == "isbi":
        root = require_shared("isbi2012-membranes", "train")
        pairs = find_pairs(root / "image", root / "label")
        kw = dict(image_size=None, crop_size=(256, 256), channels=1, remap={0: 0, 255: 1}, ignore_class=None)
        num_classes, batch = 2, 4
    else:
        root = require_shared("camvid")
        pairs = find_pairs(root / "train", root / "trainannot")
        kw = dict(image_size=(240, 320), crop_size=None, channels=3, remap=None, ignore_class=11)
        num_classes, batch = 11, 8
    real = folder_dataset(pairs, batch_size=batch, augment=Augment(ignore_class=kw["ignore_class"]), shuffle=True,
                          repeat=True, seed=0, drop_remainder=True, **kw)
    # The same batches, produced once and replayed from tf.data's in-memory cache.
    cached = real.take(args.steps).cache().repeat()
    for _ in cached.take(args.steps):
        pass

    size = kw["crop_size"] or kw["image_size"]
    model = UNet(num_classes, input_shape=(*size, kw["channels"]), filters=16, batch_norm=True)
    model.compile(keras.optimizers.Adam(1e-3), SparseCrossEntropy(ignore_class=kw["ignore_class"]))
    rows = []
    for repeat in range(args.repeats):  # interleaved, so drift in machine load hits both sides
        t_real = timed_fit(model, real, args.steps)
        t_cached = timed_fit(model, cached, args.steps)
        rows.append({"repeat": repeat, "real_step_s": t_real, "cached_step_s": t_cached, "ratio": t_real / t_cached})
    ratio = sorted(r["ratio"] for r in rows)[len(rows) // 2]
    path = write_results(f"input_pipeline_{args.data}", {
        "data": args.data, "batch_size": batch, "input_size": list(size), "steps": args.steps,
        "pipeline": "PNG decode, remap, cache, shuffle, random crop (ISBI), flip/rot90/scale/elastic/"
                    "brightness/contrast, batch, prefetch",
        "rows": rows, "median_ratio": ratio,
    })
    print_table(rows, ["repeat", "real_step_s", "cached_step_s", "ratio"])
    print(f"median ratio real/cached: {ratio:.3f}  ->  {path}")


if __name__ == "__main__":
    main()
