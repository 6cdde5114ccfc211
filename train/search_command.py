"""`endofuse search`: the gallery images most similar to a query image or a text."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from endofuse.errors import EndofuseError, MissingFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gallery", type=Path, required=True, help="folder written by endofuse index")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", type=Path, help="query image (image-to-image)")
    query.add_argument("--text", help='query text, e.g. "an NBI endoscopy frame showing a large lesion"')
    parser.add_argument("-k", type=int, default=5, help="results to return (default 5)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="classifier checkpoint (default: the one the gallery was built with)")
    parser.add_argument("--json", action="store_true", help="print the ranked results as JSON")


def search(gallery_dir: Path, image: Path | None = None, text: str | None = None, k: int = 5,
           checkpoint: Path | None = None, model=None) -> list[dict]:
    """Ranked [{image_path, label, score}] for one image or text query.

    `model`: the gallery's classifier, already loaded (repeated queries); default: load its checkpoint.
    """
    import torch.nn.functional as F

    from endofuse.model.entrep_weights import load_classifier
    from endofuse.train.classify import embed_texts
    from endofuse.train.classify_data import image_tensor
    from endofuse.train.gallery import Gallery

    if k < 1:
        raise EndofuseError(f"-k must be >= 1, got {k}")
    gallery = Gallery.open(gallery_dir)
    if model is None:
        checkpoint = Path(checkpoint or gallery.meta["checkpoint"])
        if not checkpoint.is_file():
            raise EndofuseError(f"{gallery_dir}: its checkpoint {checkpoint} is gone; pass --checkpoint FILE")
        gallery.check_checkpoint(checkpoint)
        model = load_classifier(checkpoint)
    if image is not None:
        if not Path(image).is_file():
            raise MissingFileError(f"--image: file not found: {image}")
        import torch

        with torch.no_grad():
            query = F.normalize(model.encode_image(image_tensor(image, model.img_size)), dim=-1).numpy()
    else:
        if not text or not text.strip():
            raise EndofuseError("--text: empty query")
        query = embed_texts(model, [text])
    return gallery.search(query, k)[0]


def main(args: argparse.Namespace) -> int:
    results = search(args.gallery, args.image, args.text, args.k, args.checkpoint)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for rank, r in enumerate(results, start=1):
            print(f"{rank:>3}  {r['score']:.4f}  {r['label']:<16} {r['image_path']}")
    return 0
