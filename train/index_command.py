"""`endofuse index`: embed every image of a classification folder's CSVs into a search gallery.

An existing gallery in --out is appended to (same checkpoint only; an indexed
image whose file, label or caption changed gets its row replaced); the append is
all or nothing (see `endofuse.train.gallery`). A new --out must be empty, new,
or hold only files endofuse wrote (--force to write beside others).
"""
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
    parser.add_argument("--force", action="store_true",
                        help="start a gallery in an --out folder that holds files endofuse did not write")


def main(args: argparse.Namespace) -> int:
    from endofuse.model.entrep_weights import load_classifier
    from endofuse.outputs import OutputFolder, refuse_overlap
    from endofuse.train.classify import embed_images, prompts_of
    from endofuse.train.classify_data import ImageDataset, classify_csv_path, load_classify_split
    from endofuse.train.gallery import LOCK, META, Gallery, file_sha256, locked

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise EndofuseError(f"--out '{out}' is an existing file: give a gallery folder")
    splits = [s for s in SPLITS[args.split] if args.split != "all" or classify_csv_path(args.data, s).is_file()]
    if not splits:
        raise EndofuseError(f"{args.data}: no cls_train.csv or cls_test.csv to index")
    model = load_classifier(args.checkpoint)
    records = {split: load_classify_split(args.data, split, model.classes) for split in splits}  # all rows checked
    inputs = {"--checkpoint": args.checkpoint, "--data": args.data}
    inputs.update({f"{classify_csv_path(args.data, s).name}": classify_csv_path(args.data, s) for s in splits})
    inputs.update({f"{r.where} image": r.image for rows in records.values() for r in rows})
    refuse_overlap({"--out": out}, inputs, output_dirs=["--out"])
    appending = (out / META).is_file()
    if appending:
        Gallery.open(out).check_checkpoint(args.checkpoint)  # before any work; a damaged gallery is one line
    # an existing gallery is endofuse's own folder (like train --resume); a new one follows the owned-folder rule;
    # the lock file is index's own, also while another index holds it in a folder it has just made
    folder = OutputFolder(out, "index --out", force=args.force or appending, own=[LOCK]).prepare()
    try:
        with locked(out):
            if (out / META).is_file():  # re-read under the lock: another index may have appended meanwhile
                gallery = Gallery.open(out)
                gallery.check_checkpoint(args.checkpoint)
            else:
                gallery = Gallery.empty(out, args.checkpoint, model.name, model.classes, model.config.embed_dim)
            added = replaced = 0
            for split, rows in records.items():
                dataset = ImageDataset(rows, model.img_size, model.classes, prompts_of(model))
                embeddings, _ = embed_images(model, dataset)
                # the file's checksum tells a changed image at a known path from an unchanged one
                items = [{"image_path": str(r.image.resolve()), "label": r.label, "caption": r.caption,
                          "split": split, "sha256": file_sha256(r.image)} for r in rows]
                counts = gallery.add(embeddings, items)
                added, replaced = added + counts[0], replaced + counts[1]
            gallery.save()
    finally:
        folder.commit()
    changed = f", updated {replaced} changed image(s)" if replaced else ""
    print(f"indexed {added} new image(s){changed} from {', '.join(splits)} into {out} ({len(gallery.items)} in all)")
    return 0
