"""Item titles as they appear in prompts.

MovieLens writes articles last ("Rock, The (1996)"); in a comma-separated list of titles
that comma makes the list ambiguous, so the article goes back to the front ("The Rock
(1996)"). Whitespace is collapsed, HTML entities are decoded, and very long titles (Amazon
has some) are cut at a word boundary.
"""

from __future__ import annotations

import html
import re

ARTICLES = ("The", "A", "An", "Les", "La", "Le", "L'", "Il", "Das", "Der", "Die", "El", "Los",
            "Las", "Un", "Une", "Lo")
_TRAILING_ARTICLE = re.compile(
    r"^(?P<body>.+?), (?P<article>" + "|".join(re.escape(a) for a in ARTICLES) + r")"
    r"(?P<rest>(?: \([^()]*\))*)$"
)


def normalise_title(title: str, max_chars: int = 160) -> str:
    text = " ".join(html.unescape(title).split())
    match = _TRAILING_ARTICLE.match(text)
    if match:
        article = match["article"]
        sep = "" if article.endswith("'") else " "
        text = f"{article}{sep}{match['body']}{match['rest']}"
    if len(text) > max_chars:
        cut = text[:max_chars].rsplit(" ", 1)[0]
        text = (cut or text[:max_chars]).rstrip(",;:- ")
    return text
