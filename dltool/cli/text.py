"""Strings dltool did not write itself (run folder names, summary fields, image file names, class
names from a checkpoint or an exported file, paths in error messages) made safe to show.

`safe` is for text that goes into rich markup: its brackets show literally and its control
characters show as escapes (`\\x1b`, `\\n`), so a folder named `[bold red]x[/]` cannot style the
terminal, one holding `\\x1b[31m` cannot send it an escape sequence, and a name holding a line break
cannot add a line to a one-line error. `console` is the Console every command prints through: it
shows the control characters in every string it prints as escapes too (line breaks kept), so text
printed with markup off, and cells the render modules escape with rich's own `escape`, never reach
the terminal raw either.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from rich.console import Console, ConsoleOptions, RenderableType
from rich.markup import escape
from rich.segment import Segment
from rich.text import Text

# C0 and C1 controls and DEL; the line and paragraph separators; the bidirectional embeddings,
# overrides and isolates (they reorder what follows them on the line); lone surrogates (the bytes of
# a file name that are not UTF-8, which a UTF-8 stream refuses to write).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# The same but the line break: in rendered text it is rich's own line end.
_RENDERED_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match) -> str:
    return ascii(match.group())[1:-1]  # "\x1b", "\n", "\x9b", "\u202e", "\udcff"


def plain(text: Any) -> str:
    """`text` as a str with each control character replaced by its escape: `a\\x1b[31mb` for a
    name holding ESC. Printable unicode (accents, CJK, emoji) is kept."""
    return CONTROL.sub(_escaped, str(text))


def safe(text: Any) -> str:
    """`text` ready to put into rich markup: control characters escaped (`plain`) and markup
    escaped, so `[bold red]x[/]` shows as written."""
    return escape(plain(text))


class SafeConsole(Console):
    """A rich Console that shows control characters as escapes in every string it prints (before
    the layout is measured, so tables stay aligned) and in whatever else it renders. Only rich's own
    control segments (styles, cursor moves of a live progress bar) reach the terminal as codes;
    line breaks are kept."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(_RENDERED_CONTROL.sub(_escaped, text), **kwargs)

    def render(self, renderable: RenderableType, options: Optional[ConsoleOptions] = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and _RENDERED_CONTROL.search(segment.text):
                segment = Segment(_RENDERED_CONTROL.sub(_escaped, segment.text), segment.style)
            yield segment


def console(stderr: bool = True) -> SafeConsole:
    """The console a command prints through: stderr for tables, progress and errors (stdout only for
    `predict`'s table, its result)."""
    return SafeConsole(stderr=stderr, highlight=False)
