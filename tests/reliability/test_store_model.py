"""A stateful property test of MemoryStore against a plain-Python model of it.

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from r3mem.store import Conflict, MemoryStore, NotFound, SlotRecord

torch.set_num_threads(1)


USERS, SIDS = ("ann", "bob", "cy"), ("s1", "s2", "shared")
turn_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


class StoreModel(RuleBasedStateMachine):
    """Random create/append/put/delete/export/import sequences against a dict model of the store."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="r3mem-sm-")
        self.store = MemoryStore(Path(self.dir) / "store.db")
        self.users: dict[str, dict] = {}  # user -> {"token", "sessions": {sid: {"turns", "count", "memory", "meta"}}}
        self.exports: list[dict] = []
        self.revoked: list[str] = []

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _session(self, user, sid):
        return self.users.get(user, {}).get("sessions", {}).get(sid)

    def _user(self, data) -> str:
        """Mostly an existing user (so that rules get past NotFound), sometimes any id."""
        if self.users and data.draw(st.integers(0, 9), label="existing user?") > 0:
            return data.draw(st.sampled_from(sorted(self.users)), label="user")
        return data.draw(st.sampled_from(USERS), label="user")

    def _target(self, data) -> tuple[str, str]:
        """(user, session id), mostly an existing session."""
        user = self._user(data)
        own = sorted(self.users.get(user, {}).get("sessions", {}))
        if own and data.draw(st.integers(0, 9), label="existing session?") > 0:
            return user, data.draw(st.sampled_from(own), label="session")
        return user, data.draw(st.sampled_from(SIDS), label="session")

    @initialize()
    def first_user(self):
        self.store.create_user("ann", token="tok-ann-initial")
        self.store.create_session("ann", "s1")
        self.users["ann"] = {
            "token": "tok-ann-initial",
            "sessions": {"s1": {"turns": [], "count": 0, "memory": None, "meta": {}, "history": {}}},
        }

    @rule(user=st.sampled_from(USERS), with_token=st.booleans())
    def create_user(self, user, with_token):
        token = f"tok-{uuid.uuid4().hex}" if with_token else None
        if user in self.users:
            with pytest.raises(Conflict):
                self.store.create_user(user, token=token)
            return
        self.store.create_user(user, token=token)
        self.users[user] = {"token": token, "sessions": {}}

    @rule(data=st.data(), sid=st.sampled_from(SIDS),
          meta=st.dictionaries(st.text(max_size=3), st.integers(-5, 5) | st.text(max_size=3), max_size=2))
    def create_session(self, data, sid, meta):
        user = self._user(data)
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.create_session(user, sid, meta)
        elif self._session(user, sid) is not None:
            with pytest.raises(Conflict):
                self.store.create_session(user, sid, meta)
        else:
            assert self.store.create_session(user, sid, meta).turn_count == 0
            self.users[user]["sessions"][sid] = {"turns": [], "count": 0, "memory": None, "meta": meta,
                                                 "history": {}}

    @rule(data=st.data(), text=turn_text, speaker=st.sampled_from(["user", "assistant", "Caroline"]))
    def append_turn(self, data, text, speaker):
        user, sid = self._target(data)
        s = self._session(user, sid)
        if s is None:
            with pytest.raises(NotFound):
                self.store.append_turn(user, sid, text, speaker)
            return
        turn = self.store.append_turn(user, sid, text, speaker)
        s["count"] += 1
        assert turn.index == s["count"]
        s["turns"].append((turn.index, speaker, text))

    @rule(data=st.data(), blob=st.binary(min_size=1, max_size=48), n_slots=st.integers(0, 3),
          through=st.integers(0, 6), expected=st.sampled_from(["none", "current", "current", "stale"]))
    def put_memory(self, data, blob, n_slots, through, expected):
        user, sid = self._target(data)
        slots = [SlotRecord("paragraph", f"p{i}", i, i + 1, turn_id=i + 1, text=f"slot {i}") for i in range(n_slots)]
        s = self._session(user, sid)
        if s is None:
            with pytest.raises(NotFound):
                self.store.put_memory(user, sid, blob, slots, through)
            return
        current = s["memory"][1] if s["memory"] else 0
        version = {"none": None, "current": current, "stale": current + 1}[expected]
        if through > s["count"]:  # a memory cannot cover turns that do not exist
            with pytest.raises(ValueError, match="beyond the last turn"):
                self.store.put_memory(user, sid, blob, slots, through, expected_version=version)
            return
        if expected == "stale":
            with pytest.raises(Conflict):
                self.store.put_memory(user, sid, blob, slots, through, expected_version=version)
            return
        assert self.store.put_memory(user, sid, blob, slots, through, expected_version=version) == current + 1
        s["memory"] = (blob, current + 1, through, slots)

    def _turn_index(self, data, s) -> int:
        """Mostly a turn of the session, sometimes one that is not there."""
        if s and s["turns"] and data.draw(st.integers(0, 4), label="existing turn?") > 0:
            return data.draw(st.sampled_from([t[0] for t in s["turns"]]), label="turn")
        return data.draw(st.integers(1, 8), label="turn")

    @staticmethod
    def _invalidate(s, index) -> None:
        """What an edit or delete of turn `index` does to the model's memory (see store.curation)."""
        m = s["memory"]
        if m is None:
            s["memory"] = (b"", 1, 0, [])
        elif m[2] >= index:
            s["memory"] = (b"", m[1] + 1, 0, [])
        else:
            s["memory"] = (m[0], m[1] + 1, m[2], m[3])

    @rule(data=st.data(), text=turn_text, speaker=st.sampled_from([None, "user", "Melanie"]))
    def edit_turn(self, data, text, speaker):
        user, sid = self._target(data)
        s = self._session(user, sid)
        index = self._turn_index(data, s)
        pos = next((i for i, t in enumerate(s["turns"]) if t[0] == index), None) if s else None
        if pos is None:
            with pytest.raises(NotFound):
                self.store.edit_turn(user, sid, index, text, speaker)
            return
        old = s["turns"][pos]
        assert self.store.edit_turn(user, sid, index, text, speaker).text == text
        s["turns"][pos] = (index, speaker or old[1], text)
        s["history"].setdefault(index, []).append(old[2])
        self._invalidate(s, index)

    @rule(data=st.data())
    def delete_turn(self, data):
        user, sid = self._target(data)
        s = self._session(user, sid)
        index = self._turn_index(data, s)
        if s is None or index not in [t[0] for t in s["turns"]]:
            with pytest.raises(NotFound):
                self.store.delete_turn(user, sid, index)
            return
        self.store.delete_turn(user, sid, index)
        s["turns"] = [t for t in s["turns"] if t[0] != index]
        s["history"].pop(index, None)
        self._invalidate(s, index)

    @rule(data=st.data())
    def delete_session(self, data):
        if data.draw(st.integers(0, 2), label="delete now?"):  # rarer than writes, or little would accumulate
            return
        user, sid = self._target(data)
        if self._session(user, sid) is None:
            with pytest.raises(NotFound):
                self.store.delete_session(user, sid)
            return
        self.store.delete_session(user, sid)
        del self.users[user]["sessions"][sid]

    @rule(data=st.data())
    def export(self, data):
        user, sid = self._target(data)
        s = self._session(user, sid)
        if s is None:
            with pytest.raises(NotFound):
                self.store.export_session(user, sid)
            return
        data = json.loads(json.dumps(self.store.export_session(user, sid)))
        assert [(t["index"], t["speaker"], t["text"]) for t in data["turns"]] == s["turns"]
        assert data["session"]["turn_count"] == s["count"] and data["session"]["meta"] == s["meta"]
        assert {t["index"]: [h["text"] for h in t["history"]] for t in data["turns"] if "history" in t} == s["history"]
        if s["memory"] is None or not s["memory"][0]:  # none, or reset by an edit or delete
            assert data["memory"] is None
        else:
            assert base64.b64decode(data["memory"]["blob_b64"]) == s["memory"][0]
            assert (data["memory"]["version"], data["memory"]["through_turn"]) == s["memory"][1:3]
        self.exports.append(data)

    @precondition(lambda self: self.exports)
    @rule(data=st.data(), pick=st.integers(0, 50))
    def import_session(self, data, pick):
        user = self._user(data)
        free = [x for x in SIDS if self._session(user, x) is None]
        into = data.draw(
            st.sampled_from([None, *free]) if free and data.draw(st.booleans()) else st.sampled_from((None, *SIDS))
        )
        data = self.exports[pick % len(self.exports)]
        sid = into or data["session"]["session_id"]
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.import_session(user, data, into)
            return
        if self._session(user, sid) is not None:
            with pytest.raises(Conflict):
                self.store.import_session(user, data, into)
            return
        assert self.store.import_session(user, data, into).session_id == sid
        turns = [(t["index"], t["speaker"], t["text"]) for t in data["turns"]]
        m = data["memory"]
        memory = None if m is None else (base64.b64decode(m["blob_b64"]), m["version"], m["through_turn"],
                                         [SlotRecord(**x) for x in m["slots"]])
        count = max([data["session"]["turn_count"], *(t[0] for t in turns)])
        self.users[user]["sessions"][sid] = {
            "turns": turns,
            "count": count,
            "memory": memory,
            "meta": data["session"]["meta"],
            "history": {t["index"]: [h["text"] for h in t["history"]] for t in data["turns"] if "history" in t},
        }

    @rule(data=st.data())
    def delete_user(self, data):
        if data.draw(st.integers(0, 3), label="delete now?"):
            return
        user = self._user(data)
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.delete_user(user)
            return
        self.store.delete_user(user)
        gone = self.users.pop(user)
        if gone["token"]:
            self.revoked.append(gone["token"])

    @invariant()
    def store_equals_model(self):
        assert [u.user_id for u in self.store.list_users()] == sorted(self.users)
        for token in self.revoked:
            assert self.store.authenticate(token) is None
        for user in USERS:
            if user not in self.users:
                with pytest.raises(NotFound):
                    self.store.list_sessions(user)
                continue
            model = self.users[user]
            if model["token"]:
                assert self.store.authenticate(model["token"]) == user
            listed = {s.session_id: (s.turn_count, s.meta) for s in self.store.list_sessions(user)}
            assert listed == {sid: (s["count"], s["meta"]) for sid, s in model["sessions"].items()}
            for sid, s in model["sessions"].items():
                assert [(t.index, t.speaker, t.text) for t in self.store.list_turns(user, sid)] == s["turns"]
                history: dict[int, list[str]] = {}
                for r in self.store.turn_history(user, sid):
                    history.setdefault(r.index, []).append(r.text)
                assert history == s["history"]
                got = self.store.get_memory(user, sid)
                if s["memory"] is None:
                    assert got is None
                else:
                    assert (got.blob, got.version, got.through_turn, got.slots) == s["memory"]


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
