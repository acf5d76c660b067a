"""ISBI 2012 membranes: the mobile U-Net (MobileNetV3 encoder), trained on 256x256 tiles.

The mobile U-Net needs a fixed input size, so training and validation both use native-resolution
256x256 tiles of the 512x512 slices (slices 0-23 train, 24-29 validate; 4 tiles each). The grey
slices go in as one channel (the encoder repeats it to RGB). Writes benchmarks/results/isbi_mobile_unet_<encoder>.json; the run
folder's recalibrated.keras is the model that benchmarks/edge_export.py exports.

MobileNetV3's batch norms (momentum 0.999) cannot follow the weights in a schedule this short:
validation mIoU stays at 0.40 (all "cell") in inference mode while training-mode outputs are
right. After training, the final weights get their batch-norm statistics recomputed on the
training tiles (kseg.training.recalibrate_batch_norm); the JSON reports mIoU before and after.

    python benchmarks/isbi_mobile_unet.py [--encoder mobilenetv3_small] [--budget 590] [--output DIR]
"""

import argparse
import tempfile

from common import isbi_tiles, report, training_summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="mobilenetv3_small",
                        choices=("mobilenetv3_small", "mobilenetv3_large", "separable"))
    parser.add_argument("--budget", type=float, default=590.0, help="training seconds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--loss", default="ce_dice")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--output", default=None, help="run folder (default: a temporary folder)")
    args = parser.parse_args()

    from kseg.training import DataSpec, train

    work = tempfile.mkdtemp(prefix="kseg-isbi-mobile-")
    tiles = isbi_tiles(f"{work}/tiles")
    spec = DataSpec(
        images=tiles["train"][0], masks=tiles["train"][1],
        val_images=tiles["val"][0], val_masks=tiles["val"][1],
        num_classes=2, remap={0: 0, 255: 1}, channels=1, class_names=["membrane", "cell"],
        image_size=(256, 256),  # the tiles' own size: a fixed model input, no resizing
    )
    steps = 96 // args.batch_size
    output = args.output or f"{work}/run"
    model_kwargs = {"encoder": args.encoder}
    result = train(
        spec, output, model="mobile_unet", model_kwargs=model_kwargs, epochs=args.epochs,
        steps_per_epoch=steps, batch_size=args.batch_size, learning_rate=args.lr, schedule="cosine",
        loss=args.loss, time_budget=args.budget, verbose=2,
    )
    import keras

    import kseg.losses  # noqa: F401  (registers what final.keras names)
    from kseg.metrics import ConfusionMatrix
    from kseg.training import recalibrate_batch_norm
    from export.report import image_pairs, load_examples

    def load(split):
        return load_examples(image_pairs(*tiles[split]), image_size=(256, 256), channels=1, remap={0: 0, 255: 1})

    def val_miou(model, val):
        matrix = ConfusionMatrix(2)
        matrix.update(val["masks"], model.predict(val["images"].astype("float32"), batch_size=8, verbose=0).argmax(-1))
        return matrix.summary()["mean_iou"]

    final = keras.models.load_model(f"{output}/final.keras")
    val = load("val")
    before = val_miou(final, val)
    recalibrate_batch_norm(final, load("train")["images"].astype("float32"))
    after = val_miou(final, val)
    final.save(f"{output}/recalibrated.keras")
    summary = {
        "model": {"name": "mobile_unet", "input_shape": [256, 256, 3], **model_kwargs},
        "setup": "train slices 0-23, validate 24-29, as native 256x256 tiles (4 per slice), grey (the encoder repeats the channel); "
                 f"{args.loss} loss, Adam {args.lr} + cosine over {args.epochs} epochs, batch {args.batch_size}, augmentation on",
        "loss": args.loss,
        **training_summary(result, args.batch_size),
        "run_folder": output,
        "final_val_mean_iou_before_recalibration": before,
        "final_val_mean_iou_after_recalibration": after,
        "exported_model": f"{output}/recalibrated.keras",
    }
    report(f"isbi_mobile_unet_{args.encoder}", summary,
           ("val_mean_iou", "final_val_mean_iou_before_recalibration", "final_val_mean_iou_after_recalibration",
            "train_seconds", "epochs_run", "steps_per_second"))


if __name__ == "__main__":
    main()
