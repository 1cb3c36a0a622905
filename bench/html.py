"""``report.html``: the whole report in one self-contained file.

Tables are HTML, pictures are PNGs embedded as ``data:`` URIs, the style is inline, and
there is no script. A Content-Security-Policy forbids every other source, so the page
opens from disk in a browser with no server and no network, and a browser would report
any attempt to load something else as a console error.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .toolkit import atomic

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 0.2em; } nav li { margin: 0.1em 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; font-size: 0.85em; }
dt { font-weight: bold; } dd { margin: 0; font-family: monospace; }
h1 { margin: 0 0 0.3em; } ul.verdict { font-size: 1.05em; } ul.verdict li { margin: 0.25em 0; }
p.how { font-size: 0.8em; color: #555; } p.warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.4em; }
figure { margin: 0; } figcaption { font-size: 0.75em; color: #777; }
"""


@dataclass
class Section:
    """A heading with paragraphs (text; `backticks` become code), tables and PNG images."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)  # a definition list
    items: list[str] = field(default_factory=list)  # a bullet list (the verdict lines), before the paragraphs
    warnings: list[str] = field(default_factory=list)  # highlighted, before everything else
    notes: list[str] = field(default_factory=list)  # small print, after the bullet list
    children: list["Section"] = field(default_factory=list)


def _text(s: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(s))


def _anchor(title: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    name, i = base, 1
    while name in used:
        i += 1
        name = f"{base}-{i}"
    used.add(name)
    return name


def image_tag(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def _render(section: Section, level: int, used: set[str], toc: list[str]) -> str:
    anchor = _anchor(section.title, used)
    toc.append(f'<li style="margin-left:{(level - 2) * 1.2}em"><a href="#{anchor}">{html.escape(section.title)}</a></li>')
    parts = [f'<h{level} id="{anchor}">{html.escape(section.title)}</h{level}>']
    parts += [f'<p class="warn">{_text(w)}</p>' for w in section.warnings]
    if section.items:
        parts.append('<ul class="verdict">' + "".join(f"<li>{_text(i)}</li>" for i in section.items) + "</ul>")
    parts += [f'<p class="how">{_text(n)}</p>' for n in section.notes]
    parts += [f"<p>{_text(p)}</p>" for p in section.paragraphs]
    if section.facts:
        parts.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                                      for k, v in section.facts.items()) + "</dl>")
    for caption, table in section.tables:
        if caption:
            parts.append(f"<p>{_text(caption)}</p>")
        parts.append(table.to_html(index=False, na_rep="", border=0, escape=True, float_format=lambda x: f"{x:.4g}"))
    parts += [f"<figure>{image_tag(p)}<figcaption>{html.escape(Path(p).name)}</figcaption></figure>"
              for p in section.images]
    parts += [_render(c, min(level + 1, 6), used, toc) for c in section.children]
    return "\n".join(parts)


def page(title: str, sections: list[Section], lead: list[Section] = ()) -> str:
    """``lead``: sections shown before the table of contents (the answer first)."""
    used: set[str] = set()
    toc: list[str] = []
    head = "\n".join(_render(s, 2, used, []) for s in lead)
    body = "\n".join(_render(s, 2, used, toc) for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>{html.escape(title)}</title>\n<link rel='icon' href='data:,'>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{head}\n<nav><ul>{''.join(toc)}</ul></nav>\n{body}\n</body>\n</html>\n")


def write(path: Path, title: str, sections: list[Section], lead: list[Section] = ()) -> Path:
    return atomic.write_text(Path(path), page(title, sections, lead))
