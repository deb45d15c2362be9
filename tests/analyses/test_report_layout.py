"""A report organised for a reader (issue 46): every contents link lands on a section, no two headings read the same,
no table style breaks a number, and no placeholder ("-1", "inf", "nan", "-", raw Markdown) stands in a cell.

`layout_problems` is checked on the committed reports here, on freshly rendered ones where the report and intervene
tests render them, and on a constructed page with each defect (each must be flagged)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = {"-1", "-1.0", "inf", "-inf", "nan", "NaN", "None", "-", "?"}
BREAKING = re.compile(r"overflow-wrap\s*:\s*anywhere|word-break\s*:\s*break-all|word-wrap\s*:\s*anywhere")


class _Page(HTMLParser):
    """The parts of a page the layout rules read: ids, in-page links, headings, table cells, the inline CSS."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.headings, self.cells, self.css = set(), [], [], [], []
        self._open: list[str] = []
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and (attrs.get("href") or "").startswith("#"):
            self.links.append(attrs["href"][1:])
        if "style" in attrs:
            self.css.append(attrs["style"])
        if tag in ("h1", "h2", "h3", "h4", "td", "th", "style"):
            self._open.append(tag)
            self._text = []

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()
            text = " ".join("".join(self._text).split())
            if tag in ("h2", "h3", "h4"):
                self.headings.append(text)
            elif tag == "td":
                self.cells.append(text)
            elif tag == "style":
                self.css.append("".join(self._text))

    def handle_data(self, data):
        if self._open:
            self._text.append(data)


def layout_problems(html: str) -> list[str]:
    """What a reader would trip on: a contents link to nowhere, a repeated heading, a style that breaks numbers, a
    placeholder value or raw Markdown in a cell."""
    page = _Page()
    page.feed(html)
    found = [f"link #{link} lands nowhere" for link in page.links if link not in page.ids]
    found += [f"heading {h!r} appears {page.headings.count(h)} times" for h in sorted(set(page.headings))
              if page.headings.count(h) > 1]
    found += [f"style breaks words anywhere: {m.group(0)!r}" for css in page.css for m in BREAKING.finditer(css)]
    found += [f"placeholder cell {c!r}" for c in page.cells if c in PLACEHOLDERS]
    found += [f"raw Markdown in {c[:60]!r}" for c in page.cells + page.headings if "**" in c or re.search(r"`[^`]+`", c)]
    return found


COMMITTED = sorted(ROOT.glob("reports/*.html"))


@pytest.mark.parametrize("report", COMMITTED, ids=lambda p: p.name)
def test_the_committed_reports_are_laid_out_for_a_reader(report):
    html = report.read_text()
    assert 'id="summary"' in html and 'class="contents"' in html  # the plain summary, then the contents
    assert layout_problems(html) == []


def test_the_rules_flag_each_defect():
    bad = ('<style>td { overflow-wrap: anywhere; }</style><nav><a href="#gone">x</a></nav><h2 id="a">Claims</h2>'
           '<h3>Run x</h3><h3>Run x</h3><table><tr><td>-1</td><td>inf</td><td>**bold**</td><td>0.95</td></tr></table>')
    found = layout_problems(bad)
    assert len(found) == 6, found
    assert layout_problems('<nav><a href="#a">a</a></nav><h2 id="a">A</h2><h2>B</h2><table><tr><td>0.9 [0.8, 1.0]</td>'
                           '<td></td><td>identical</td></tr></table>') == []
