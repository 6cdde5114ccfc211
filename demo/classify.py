"""The "Classify & search" tab's work: class probabilities and top-k gallery images for an image or a text.

The classifier checkpoint and the gallery folder are named by whoever starts
the demo (`endofuse demo --classifier CKPT --gallery GALLERY`), never by the
browser. Result images are read here from the gallery's own files and sent as
pixels, so Gradio never has to serve a path outside its upload cache.

"Use the current overlay frame" classifies the WLI frame behind the latest
overlay of the "Image pair" or "Live" tab. That frame is kept in the browser
session's server-side `gr.State` by the segmentation handlers themselves; the
request carries no image and no path, so the client cannot point it elsewhere.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import torch
import torch.nn.functional as F

from endofuse.demo.uploads import bgr_to_rgb, rgb_to_bgr
from endofuse.kernels import preprocess
from endofuse.model.dataset import read_image
from endofuse.model.entrep_weights import load_classifier
from endofuse.train.classify import embed_texts
from endofuse.train.gallery import Gallery

MAX_QUERY_CHARS = 300
NO_FRAME_YET = ("no overlay frame yet: segment an image in the Image pair tab (or start the Live tab) first, "
                "or upload a frame here")
MAX_K = 12
THUMB_SIDE = 256


class ClassifySearch:
    """A classifier and (optionally) its gallery, loaded once when the demo starts."""

    def __init__(self, checkpoint: str | Path, gallery: str | Path | None = None):
        self.model = load_classifier(checkpoint)
        self.model.merge_lora()
        self.gallery = None
        if gallery is not None:
            self.gallery = Gallery.open(Path(gallery))
            self.gallery.check_checkpoint(Path(checkpoint))

    def _thumbs(self, results: list[dict]) -> list[tuple[np.ndarray, str]]:
        out = []
        for r in results:
            image = read_image(Path(r["image_path"]))
            scale = THUMB_SIDE / max(image.shape[:2])
            if scale < 1:
                size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            out.append((bgr_to_rgb(image), f"{r['label']}  {r['score']:.3f}"))
        return out

    def _search(self, query: np.ndarray, k: int) -> list[tuple[np.ndarray, str]]:
        if self.gallery is None:
            return []
        return self._thumbs(self.gallery.search(query, max(1, min(int(k), MAX_K)))[0])

    @torch.inference_mode()
    def classify_image(self, image_rgb: np.ndarray | None, k: int = 5):
        """(class -> probability, top-k similar gallery images) for an uploaded RGB image."""
        if image_rgb is None:
            raise gr.Error("upload an image first")
        x = preprocess(rgb_to_bgr(image_rgb), (self.model.img_size, self.model.img_size))
        z = F.normalize(self.model.encode_image(x), dim=-1)
        probs = self.model.classify_features(z).softmax(-1)[0]
        return ({c: float(p) for c, p in zip(self.model.classes, probs, strict=True)},
                self._search(z.numpy(), k))

    def classify_current_frame(self, latest_rgb: np.ndarray | None, k: int = 5):
        """The "use the current overlay frame" button: (the frame, probabilities, top-k similar).

        `latest_rgb` is the session's `gr.State`, written only by `keep_segmented_frame`.
        """
        if latest_rgb is None:
            raise gr.Error(NO_FRAME_YET)
        probs, similar = self.classify_image(latest_rgb, k)
        return latest_rgb, probs, similar

    def search_text(self, text: str | None, k: int = 5) -> list[tuple[np.ndarray, str]]:
        text = (text or "").strip()
        if not text:
            raise gr.Error("type a description to search for, e.g. 'an NBI endoscopy frame showing a small lesion'")
        if len(text) > MAX_QUERY_CHARS:
            raise gr.Error(f"the query is {len(text)} characters; at most {MAX_QUERY_CHARS}")
        if self.gallery is None:
            raise gr.Error("no gallery loaded: start the demo with --gallery GALLERY (built by endofuse index)")
        return self._search(embed_texts(self.model, [text]), k)


def keep_segmented_frame(segment):
    """Wrap a segmentation handler so it also returns its WLI input, for the session's "current frame" state.

    The wrapped handler takes the state's previous value as its last input and
    keeps it when no overlay was produced (e.g. the webcam has not started).
    """
    def handler(wli_rgb, *args):
        *args, previous = args
        result = segment(wli_rgb, *args)
        return (*result, wli_rgb if result[0] is not None else previous)

    return handler
