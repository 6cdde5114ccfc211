"""`endofuse index`: embed every image of a classification folder's CSVs into a search gallery."""
from __future__ import annotations

import argparse
from pathlib import Path

from endofuse.errors import EndofuseError

SPLITS = {"all": ("train", "test"), "train": ("train",), "test": ("test",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="classifier checkpoint (train --task classify)")
    parser.add_argument("--data", type=Path, required=True, help="folder with cls_train.csv / cls_test.csv")
    parser.add_argument("--split", choices=tuple(SPLITS), default="all", help="which CSVs to index (default all)")
    parser.add_argument("--out", type=Path, required=True,
                        help="gallery folder; an existing gallery of the same checkpoint is appended to")


def main(args: argparse.Namespace) -> int:
    from endofuse.model.entrep_weights import load_classifier
    from endofuse.outputs import refuse_overlap
    from endofuse.train.classify import embed_images, prompts_of
    from endofuse.train.classify_data import ImageDataset, classify_csv_path, load_classify_split
    from endofuse.train.gallery import Gallery

    refuse_overlap({"--out": args.out}, {"--checkpoint": args.checkpoint, "--data": args.data})
    model = load_classifier(args.checkpoint)
    splits = [s for s in SPLITS[args.split] if args.split != "all" or classify_csv_path(args.data, s).is_file()]
    if not splits:
        raise EndofuseError(f"{args.data}: no cls_train.csv or cls_test.csv to index")
    if (args.out / "gallery.json").is_file():
        gallery = Gallery.open(args.out)
        gallery.check_checkpoint(args.checkpoint)
    else:
        gallery = Gallery.empty(args.out, args.checkpoint, model.name, model.classes, model.config.embed_dim)
    added = 0
    for split in splits:
        records = load_classify_split(args.data, split, model.classes)
        dataset = ImageDataset(records, model.img_size, model.classes, prompts_of(model))
        embeddings, _ = embed_images(model, dataset)
        items = [{"image_path": str(r.image.resolve()), "label": r.label, "caption": r.caption, "split": split}
                 for r in records]
        added += gallery.add(embeddings, items)
    gallery.save()
    print(f"indexed {added} new image(s) from {', '.join(splits)} into {args.out} ({len(gallery.items)} in all)")
    return 0
