"""Model-independent evaluation: metrics, benchmark loaders and explicit-retrieval baselines.

Submodules are imported on demand (``from r3mem.eval.metrics import f1``) so that loading the
metrics does not pull in sentence-transformers or rank-bm25.
"""
