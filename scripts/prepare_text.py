#!/usr/bin/env python3
"""Extracts clean plain text from Debian documentation packages, reproducibly.

eval.txt  <- the Debian Administrator's Handbook (package debian-handbook), chapters in book order
calib.txt <- the Python 3.11 documentation (package python3.11-doc): tutorial, howtos, library
The two never share a document, so calibration never sees evaluation text.
Output goes to $SAAP_CACHE (default ~/.cache/saap)/text/.
"""
import hashlib, html.parser, os, re, sys
from pathlib import Path

HANDBOOK = Path("/usr/share/doc/debian-handbook/html/en-US")
PYDOC = Path("/usr/share/doc/python3.11/html")
SKIP_TAGS = {"script", "style", "head", "nav", "pre", "table"}
BLOCK_BREAK = "\x00"  # block boundaries; raw newlines inside a paragraph are just wrapping
BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "li", "dt", "dd", "div", "br", "title", "blockquote"}


class TextExtractor(html.parser.HTMLParser):
    """Keeps prose: paragraphs and headings; drops code listings, tables and navigation."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.skip_depth = 0
        self.parts = []

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class", "") or ""
        if tag in SKIP_TAGS or "navheader" in cls or "navfooter" in cls or "sphinxsidebar" in cls \
                or "related" in cls or "footer" in cls or "headerlink" in cls:
            self.skip_depth += 1
        if tag in BLOCK_TAGS:
            self.parts.append(BLOCK_BREAK)

    def handle_endtag(self, tag):
        if self.skip_depth and tag in SKIP_TAGS | {"div", "a"}:
            self.skip_depth -= 1
        if tag in BLOCK_TAGS:
            self.parts.append(BLOCK_BREAK)

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data)

    def text(self):
        raw = "".join(self.parts).replace("\u00b6", "")
        paragraphs = []
        for block in raw.split(BLOCK_BREAK):
            line = re.sub(r"\s+", " ", block).strip()
            if len(line) >= 40 or (line and line[-1] in ".:?!"):
                paragraphs.append(line)
        return "\n".join(paragraphs)


def extract(path):
    parser = TextExtractor()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser.text()


def handbook_pages():
    index = (HANDBOOK / "index.html").read_text(encoding="utf-8", errors="replace")
    seen, order = set(), []
    for href in re.findall(r'href="([^"#]+\.html)', index):
        if href not in seen and (HANDBOOK / href).exists():
            seen.add(href)
            order.append(HANDBOOK / href)
    return order


def pydoc_pages():
    pages = []
    for sub in ("tutorial", "howto", "library"):
        pages += sorted((PYDOC / sub).glob("*.html"))
    return pages


def write(name, pages, out_dir):
    if not pages:
        sys.exit(f"prepare_text: no pages found for {name}; is its Debian package installed?")
    text = "\n\n".join(t for t in (extract(p) for p in pages) if t)
    path = out_dir / name
    path.write_text(text + "\n", encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    print(f"[setup] {path}: {len(pages)} pages, {len(text)} chars, sha256 {digest}")


def main():
    out_dir = Path(os.environ.get("SAAP_CACHE", Path.home() / ".cache" / "saap")) / "text"
    out_dir.mkdir(parents=True, exist_ok=True)
    write("eval.txt", handbook_pages(), out_dir)
    write("calib.txt", pydoc_pages(), out_dir)


if __name__ == "__main__":
    main()
