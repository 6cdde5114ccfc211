"""A screenshot of a case folder's review page, for docs/case.md: the page as a browser shows it.

    endofuse synth clips/ --video 10 --endoscope
    endofuse run --endoscope clips/endoscope.mp4 --view-gate 0 --case case/
    python benchmarks/case_review_image.py case/ --out docs/images/case-review.png

Opens `case/review.html` in headless Chromium (Debian's `chromium`, driven by playwright as the browser tests do;
no network) and saves the top of the page, 1100 px wide.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("ENDOFUSE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path, help="a case folder of `endofuse run --case`")
    parser.add_argument("--out", type=Path, default=Path("docs/images/case-review.png"))
    parser.add_argument("--height", type=int, default=900, help="viewport height in px (the top of the page)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    page_path = (args.case / "review.html").resolve()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": args.height})
            page.goto(page_path.as_uri())
            page.screenshot(path=str(args.out))
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
