from cprec_core.data.titles import normalise_title


def test_articles_move_to_the_front():
    assert normalise_title("Rock, The (1996)") == "The Rock (1996)"
    assert normalise_title("Bug's Life, A (1998)") == "A Bug's Life (1998)"
    assert normalise_title("Postino, Il (1994)") == "Il Postino (1994)"
    assert normalise_title("Usual Suspects, The") == "The Usual Suspects"
    assert (normalise_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
            == "The City of Lost Children (Cité des enfants perdus, La) (1995)")


def test_titles_without_trailing_article_are_unchanged():
    assert normalise_title("Good, the Bad and the Ugly (1966)") == "Good, the Bad and the Ugly (1966)"
    assert normalise_title("Seven (Se7en) (1995)") == "Seven (Se7en) (1995)"


def test_whitespace_entities_and_length():
    assert normalise_title("  Tom &amp; Jerry \t Show ") == "Tom & Jerry Show"
    long = "word " * 100
    out = normalise_title(long, max_chars=30)
    assert len(out) <= 30 and not out.endswith(" ") and out.startswith("word word")
