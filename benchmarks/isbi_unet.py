"""ISBI 2012 membranes: U-Net trained on the first 24 pairs, validated on the last 6, 256x256.

Target (issue: foundation): val mIoU >= 0.80 within 10 minutes of training on 2 CPU cores.

Two readings of "256x256", both measured:
  --protocol crops        random 256x256 windows of the native 512x512 pairs for training
                          (the U-Net paper trains on tiles), whole 512x512 images for validation;
  --protocol downsampled  every pair resized to 256x256 (masks by nearest neighbour, which
                          breaks the 1-3 px membranes at random, in the validation labels too).
Writes benchmarks/results/isbi_unet_<protocol>_<loss>_f<filters>_lr<lr>.json and prints a per-class table.

    python benchmarks/isbi_unet.py [--protocol crops] [--budget 590] [--filters 16]
"""

import argparse
import tempfile

from common import isbi_pairs, link_subset, report, training_summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("crops", "downsampled"), default="crops")
    parser.add_argument("--budget", type=float, default=590.0, help="training seconds (default 590: the run stops after the epoch that ends past it, inside 10 minutes)")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--loss", default="ce")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the cosine schedule (default: what fits the budget here: 190 crops, 260 downsampled)")
    parser.add_argument("--output", default=None, help="run folder (default: a temporary folder)")
    args = parser.parse_args()

    from kseg.training import DataSpec, train

    pairs = isbi_pairs()
    work = tempfile.mkdtemp(prefix="kseg-isbi-")
    train_images, train_masks = link_subset(pairs[:24], f"{work}/train")
    val_images, val_masks = link_subset(pairs[24:], f"{work}/val")
    spec = DataSpec(
        images=train_images, masks=train_masks, val_images=val_images, val_masks=val_masks,
        num_classes=2, remap={0: 0, 255: 1}, channels=1, class_names=["membrane", "cell"],
        image_size=(256, 256) if args.protocol == "downsampled" else None,
        crop_size=(256, 256) if args.protocol == "crops" else None,
    )
    epochs = args.epochs or (190 if args.protocol == "crops" else 260)
    steps = 24 // args.batch_size
    result = train(
        spec, args.output or f"{work}/run", model="unet",
        model_kwargs={"filters": args.filters, "batch_norm": True}, epochs=epochs,
        steps_per_epoch=steps, batch_size=args.batch_size, learning_rate=args.lr, schedule="cosine",
        loss=args.loss, time_budget=args.budget, verbose=2,
    )
    summary = {
        "model": {"name": "unet", "filters": args.filters, "batch_norm": True},
        "protocol": args.protocol,
        "setup": "train pairs 0-23, validate 24-29; " + (
            "random 256x256 crops of 512x512, validation on whole 512x512 images" if args.protocol == "crops"
            else "all pairs resized to 256x256") + f"; {args.loss} loss, Adam {args.lr} + cosine over {epochs} epochs, "
            "flip/rot90/scale/elastic/brightness/contrast augmentation",
        "loss": args.loss,
        **training_summary(result, args.batch_size),
        "target_mean_iou": 0.80,
        "run_folder": args.output or f"{work}/run",
    }
    summary["target_met"] = bool(summary["val_mean_iou"] >= 0.80 and summary["train_seconds"] <= 600)
    report(f"isbi_unet_{args.protocol}_{args.loss}_f{args.filters}_lr{args.lr:g}", summary,
           ("val_mean_iou", "train_seconds", "epochs_run", "steps_per_second", "target_met"))

if __name__ == "__main__":
    main()
