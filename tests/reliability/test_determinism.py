"""Two processes writing the same text produce byte-identical memory files and recall.

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch
from _helpers import SRC
from conftest import perturb_trainables, tiny_cfg

from r3mem.engine import R3Mem
from r3mem.tiny import SAMPLE_TEXT, tiny_model

torch.set_num_threads(1)


_WRITER = """
import json, sys, torch
torch.set_num_threads(1)
from r3mem.text import iter_text_chunks
from r3mem.engine import R3Mem
adapter, text, out = sys.argv[1:4]
eng = R3Mem.from_pretrained(adapter)
mem = eng.write(iter_text_chunks(text, 97))
eng.save(mem, out)
flushed = eng.flush(mem)
print(json.dumps({
    "hash": eng.adapter_hash,
    "query": eng.recall(mem, query="Who built the stone house?", top_k=2).text,
    "index": eng.recall(flushed, index=1).text,
    "entity": eng.recall(flushed, level="entity", query="Henry Sibley").text,
    "document": eng.recall(flushed, level="document", max_new_tokens=12).text,
    "flushed_sha": __import__("hashlib").sha256(eng.to_bytes(flushed)).hexdigest(),
}))
"""


def test_two_processes_write_identical_memory_files(tmp_path, tok):
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(base_model="tiny-llama", seed=7))
    perturb_trainables(eng.model, seed=11)
    eng.save_adapter(tmp_path / "adapter")
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT + "\n\nZürich 東京 😀, and Henry Sibley again.\n\nA pending tail", encoding="utf-8")
    procs = []
    for k in (1, 2):  # different hash seeds: no set or dict order may leak into the memory
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": str(k), "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "adapter"), str(text),
                                       str(tmp_path / f"m{k}.r3mem")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = (tmp_path / "m1.r3mem").read_bytes(), (tmp_path / "m2.r3mem").read_bytes()
    assert a == b and outs[0] == outs[1]
    assert outs[0]["query"] and outs[0]["index"]
    # this process (a third one) loads the file and recalls the same; another seed gives another memory
    here = R3Mem.from_pretrained(tmp_path / "adapter")
    mem = here.load(tmp_path / "m1.r3mem")
    assert here.recall(mem, query="Who built the stone house?", top_k=2).text == outs[0]["query"]
    assert hashlib.sha256(here.to_bytes(here.flush(mem))).hexdigest() == outs[0]["flushed_sha"]
    assert len(mem.entities) >= 3 and mem.pending_text == "A pending tail"  # entity order and the tail are covered
