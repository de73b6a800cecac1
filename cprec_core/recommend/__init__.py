"""The product stage: recommendations a team can ship.

retrieval.py    scores over a domain's whole item set (classic models), top N
pipeline.py     the two-stage pipeline's choices (made on validation) and LLM re-ranking
full_ranking.py the full-ranking evaluation (test item against every item of the domain)
batch.py        top k for every user, stored and exported as a snapshot for the service
rerank.py       on-the-fly re-ranking for the HTTP service (cprec_core.serving)
"""
