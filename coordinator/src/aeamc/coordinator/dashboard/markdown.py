"""A small, safe Markdown subset to HTML, for serving the privacy policy at ``/privacy``.

The policy has one source, ``docs/privacy-policy.md``; the coordinator ships a copy and
renders it itself, so the page needs no Markdown library and can never drift from the
document. Supported: ATX headings, paragraphs, flat bulleted and numbered lists (indented
continuation lines), pipe tables, fenced code blocks, block quotes, horizontal rules, and
inline code, ``**strong**``, ``*emphasis*``, ``[links](url)`` and ``<https://autolinks>``.

Every piece of source text is HTML-escaped before any markup is added, raw HTML in the
source is shown as text, and a link is only made for ``http(s):``, ``mailto:``, relative
and fragment URLs — so nothing in the document can inject script into the page.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"(```|~~~)\s*([\w+-]*)\s*$")
_BULLET = re.compile(r"[-*+]\s+(.*)$")
_ORDERED = re.compile(r"(\d{1,9})[.)]\s+(.*)$")
_TABLE_SEP = re.compile(r"\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_RULE = re.compile(r"(-{3,}|\*{3,}|_{3,})\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_AUTOLINK = re.compile(r"&lt;((?:https?://|mailto:)[^\s&]+(?:&amp;[^\s&]+)*)&gt;")
_STRONG = re.compile(r"\*\*(.+?)\*\*")
_EM = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_SAFE_URL = re.compile(r"(https?://|mailto:|/|#|\./|\.\./)|[^:]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str


def slug(text: str) -> str:
    """The ``id`` of a heading: lower case, words joined by hyphens (GitHub-like)."""
    words = re.sub(r"[^\w\s-]", "", text.lower()).split()
    return "-".join(words) or "section"


def headings(source: str) -> list[Heading]:
    """The document's headings in order, as ``/privacy`` shows them (fences skipped)."""
    out = []
    in_fence = False
    for line in source.splitlines():
        if _FENCE.match(line.strip()):
            in_fence = not in_fence
            continue
        m = _HEADING.match(line) if not in_fence else None
        if m:
            text = _plain(m.group(2))
            out.append(Heading(len(m.group(1)), text, slug(text)))
    return out


def _plain(text: str) -> str:
    """Heading text without inline markup (for anchors and the table of contents)."""
    text = _LINK.sub(r"\1", text)
    return re.sub(r"[`*]", "", text).strip()


def _safe_url(url: str) -> bool:
    return _SAFE_URL.match(url) is not None


def inline(text: str) -> str:
    """Inline markup of one block's text; everything not markup is escaped."""
    parts: list[str] = []
    last = 0
    for m in _CODE_SPAN.finditer(text):
        parts.append(_inline_text(text[last : m.start()]))
        parts.append(f"<code>{html.escape(m.group(2).strip())}</code>")
        last = m.end()
    parts.append(_inline_text(text[last:]))
    return "".join(parts)


def _inline_text(text: str) -> str:
    held: list[str] = []

    def hold(markup: str) -> str:
        held.append(markup)
        return f"\x00{len(held) - 1}\x00"

    def link(m: re.Match[str]) -> str:
        label, url = m.group(1), html.unescape(m.group(2))
        if not _safe_url(url):
            return m.group(0)
        return hold(f'<a href="{html.escape(url)}">') + label + hold("</a>")

    def autolink(m: re.Match[str]) -> str:
        url = m.group(1)  # already escaped, and a safe scheme by the pattern
        return hold(f'<a href="{url}">{url}</a>')

    out = html.escape(text.replace("\x00", ""))
    out = _AUTOLINK.sub(autolink, out)
    out = _LINK.sub(link, out)
    out = _STRONG.sub(r"<strong>\1</strong>", out)
    out = _EM.sub(r"<em>\1</em>", out)
    return re.sub("\x00(\\d+)\x00", lambda m: held[int(m.group(1))], out)


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]


def _is_block_start(line: str, following: str | None) -> bool:
    s = line.strip()
    return bool(
        _HEADING.match(line)
        or _FENCE.match(s)
        or _BULLET.match(s)
        or _ORDERED.match(s)
        or s.startswith(">")
        or (_RULE.match(s) and not s.startswith("-"))
        or (s.startswith("|") and following is not None and _TABLE_SEP.match(following.strip()))
    )


def render(source: str) -> str:
    """The document as an HTML fragment (no ``<html>``/``<body>``)."""
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    i = 0
    n = len(lines)

    def at(k: int) -> str | None:
        return lines[k] if k < n else None

    while i < n:
        line = lines[i]
        s = line.strip()
        if not s:
            i += 1
            continue
        fence = _FENCE.match(s)
        if fence:
            marker, lang = fence.group(1), fence.group(2)
            body: list[str] = []
            i += 1
            while i < n and lines[i].strip() != marker:
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or the end of the document)
            cls = f' class="language-{html.escape(lang)}"' if lang else ""
            out.append(f"<pre><code{cls}>{html.escape(chr(10).join(body))}</code></pre>")
            continue
        m = _HEADING.match(line)
        if m:
            level = len(m.group(1))
            anchor = slug(_plain(m.group(2)))
            out.append(f'<h{level} id="{anchor}">{inline(m.group(2))}</h{level}>')
            i += 1
            continue
        if _RULE.match(s):
            out.append("<hr>")
            i += 1
            continue
        nxt = at(i + 1)
        if "|" in s and nxt is not None and _TABLE_SEP.match(nxt.strip()):
            header = _cells(s)
            rows: list[list[str]] = []
            i += 2
            while i < n and lines[i].strip() and "|" in lines[i]:
                rows.append(_cells(lines[i]))
                i += 1
            head = "".join(f'<th scope="col">{inline(c)}</th>' for c in header)
            body_rows = "".join(
                "<tr>"
                + "".join(f"<td>{inline(c)}</td>" for c in (r + [""] * len(header))[: len(header)])
                + "</tr>"
                for r in rows
            )
            out.append(
                f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{body_rows}</tbody></table></div>"
            )
            continue
        if _BULLET.match(s) or _ORDERED.match(s):
            ordered = _ORDERED.match(s) is not None
            pattern = _ORDERED if ordered else _BULLET
            items: list[list[str]] = []
            start = int(_ORDERED.match(s).group(1)) if ordered else 1  # type: ignore[union-attr]
            while i < n:
                cur = lines[i]
                cs = cur.strip()
                item = pattern.match(cs)
                if item and not cur.startswith("    "):
                    items.append([item.group(item.lastindex or 1)])
                elif cs and items and cur[:1] in (" ", "\t"):
                    items[-1].append(cs)  # an indented continuation of the item
                else:
                    break
                i += 1
            tag = "ol" if ordered else "ul"
            attr = f' start="{start}"' if ordered and start != 1 else ""
            lis = "".join(f"<li>{inline(' '.join(t))}</li>" for t in items)
            out.append(f"<{tag}{attr}>{lis}</{tag}>")
            continue
        if s.startswith(">"):
            quoted: list[str] = []
            while i < n and lines[i].strip().startswith(">"):
                quoted.append(lines[i].strip()[1:].strip())
                i += 1
            paragraphs = [p for p in "\n".join(quoted).split("\n\n") if p.strip()]
            inner = "".join(f"<p>{inline(' '.join(p.split()))}</p>" for p in paragraphs)
            out.append(f"<blockquote>{inner}</blockquote>")
            continue
        para = [s]
        i += 1
        while i < n and lines[i].strip() and not _is_block_start(lines[i], at(i + 1)):
            para.append(lines[i].strip())
            i += 1
        out.append(f"<p>{inline(' '.join(para))}</p>")
    return "\n".join(out)
