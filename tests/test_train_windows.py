"""Segment-recurrent LM windows."""

from r3mem.train.windows import Window, lm_windows


def _docs(*lengths: int) -> list[list[int]]:
    """Document d holds the ids d*1000, d*1000+1, …: a row is contiguous iff its ids increase by one."""
    return [list(range(d * 1000, d * 1000 + n)) for d, n in enumerate(lengths)]


def test_windows_tile_documents_and_drop_short_tails():
    assert lm_windows(_docs(25, 3, 10), window_len=10, min_tokens=4) == [
        Window(0, 0, 10),
        Window(0, 10, 10),
        Window(0, 20, 5),
        Window(2, 0, 10),
    ]
