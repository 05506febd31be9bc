"""Sessions from anyone: hostile content is refused with one sentence at load; an edit of any member
is named by the loader and by verify; verify recomputes every array it can."""

import hashlib
import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from core.annotations import Annotations
from core.attribution import AttributionSettings
from core.errors import CircuitDeskError
from core.runs import attribution_session, circuit_session, PairSource
from core.circuits import CircuitSettings
from core.session import load_session, save_session
from core.verify import verify_session

PROMPT = "when mary and john went to the store"


@pytest.fixture(scope="module")
def saved(tiny_folder, tmp_path_factory):
    """(attribution session path, circuit session path), both with annotations, made by the tiny llama."""
    from core.models import load_model

    folder = tiny_folder("llama")
    m = load_model(folder, device="cpu")
    root = tmp_path_factory.mktemp("untrusted")
    s, _ = attribution_session(m, str(folder), PROMPT, AttributionSettings(max_nodes=30))
    feats = [int(i) for i in np.flatnonzero(s.graph.kind == 1)[:3]]
    s.annotations = Annotations.from_json({"groups": [{"label": "pair", "nodes": feats[:2]}], "pinned": feats[2:],
                                           "labels": {str(feats[0]): "a name"}, "findings": "It copies the name.",
                                           "threshold": 0.7}, s.graph.n_nodes)
    a = save_session(root / "a.cdesk", s)
    c, _, _ = circuit_session(m, str(folder), PairSource(task="induction", n_pairs=3), CircuitSettings(method="eap"))
    c.annotations = Annotations(pinned=(1,), findings="Heads in layer 1.")
    return a, save_session(root / "c.cdesk", c)


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write(path, parts: dict[str, bytes], rehash: bool = False):
    """A zip of ``parts``; ``rehash``: the manifest's member hashes rewritten to match (a careful forger)."""
    try:
        man = json.loads(parts["manifest.json"]) if rehash else None
    except (ValueError, RecursionError):  # a manifest that is itself the attack stays as it is
        man = None
    if man is not None:
        man["members"] = {n: hashlib.sha256(d).hexdigest() for n, d in parts.items() if n != "manifest.json"}
        parts = {**parts, "manifest.json": json.dumps(man).encode()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in parts.items():
            z.writestr(n, d)
    return path


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def edit_json(parts, member, change):
    doc = json.loads(parts[member])
    change(doc)
    return {**parts, member: json.dumps(doc).encode()}


def arr(parts, name):
    return np.load(io.BytesIO(parts[f"arrays/{name}.npy"]))


def with_array(parts, name, value):
    return {**parts, f"arrays/{name}.npy": npy(value)}


def _set(path: str, value):
    def change(doc):
        *head, last = path.split(".")
        for k in head:
            doc = doc[k]
        doc[last] = value
    return change


def _cycle(p):
    src, dst = arr(p, "src").copy(), arr(p, "dst").copy()
    src[0], dst[0] = dst[0], src[0]  # an edge backwards: a later layer feeding an earlier one
    return with_array(with_array(p, "src", src), "dst", dst)


HOSTILE = {  # what a hostile or damaged file holds -> a word of the one sentence that refuses it
    "stats a list": (lambda p: edit_json(p, "manifest.json", _set("stats", [1, 2])), "stats"),
    "targets a string": (lambda p: edit_json(p, "manifest.json", _set("targets", "x")), "targets"),
    "settings a number": (lambda p: edit_json(p, "manifest.json", _set("settings", 5)), "settings"),
    "a setting of the wrong type": (lambda p: edit_json(p, "manifest.json", _set("settings.max_nodes", "9")), "max_nodes"),
    "an unknown setting": (lambda p: edit_json(p, "manifest.json", _set("settings.evil", 1)), "evil"),
    "model.files a list": (lambda p: edit_json(p, "manifest.json", _set("model.files", ["a"])), "files"),
    "logit_lens a string": (lambda p: edit_json(p, "manifest.json", _set("logit_lens", "x")), "logit_lens"),
    "graph.meta.settings a string": (lambda p: edit_json(p, "manifest.json", _set("graph.meta.settings", "x")), "settings"),
    "NaN in the manifest": (lambda p: {**p, "manifest.json": p["manifest.json"].replace(b'"seconds": ', b'"seconds": NaN, "x": ', 1)}, "JSON"),
    "a manifest nested 100,000 deep": (lambda p: {**p, "manifest.json": b"[" * 100_000 + b"]" * 100_000}, "nested"),
    "nested 100,000 deep inside": (lambda p: {**p, "manifest.json": p["manifest.json"][:-2] + b', "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}, "nested"),
    "more positions than tokens": (lambda p: edit_json(p, "manifest.json", lambda d: (d["graph"]["tokens"].pop(), d["graph"]["token_ids"].pop())), "position"),
    "a position of 10^6": (lambda p: with_array(p, "pos", np.where(arr(p, "kind") == 1, 10**6, arr(p, "pos")).astype(np.int32)), "position"),
    "an edge cycle": (_cycle, "cycle"),
    "kind 9": (lambda p: with_array(p, "kind", np.full_like(arr(p, "kind"), 9)), "kind"),
    "float src": (lambda p: with_array(p, "src", arr(p, "src").astype(np.float64)), "src"),
    "string weights": (lambda p: with_array(p, "weight", arr(p, "weight").astype(str)), "weight"),
    "NaN weights": (lambda p: with_array(p, "weight", np.full_like(arr(p, "weight"), np.nan)), "not finite"),
    "infinite activations": (lambda p: with_array(p, "activation", np.full_like(arr(p, "activation"), np.inf)), "not finite"),
    "a lens above 1": (lambda p: with_array(p, "logit_lens", arr(p, "logit_lens") + 2), "logit lens"),
    "groups 5": (lambda p: edit_json(p, "annotations.json", _set("groups", 5)), "groups"),
    'pinned ["a"]': (lambda p: edit_json(p, "annotations.json", _set("pinned", ["a"])), "pinned"),
    'threshold "x"': (lambda p: edit_json(p, "annotations.json", _set("threshold", "x")), "threshold"),
    "threshold NaN": (lambda p: {**p, "annotations.json": p["annotations.json"].replace(b'"threshold": 0.7', b'"threshold": NaN')}, "JSON"),
    "labels a list": (lambda p: edit_json(p, "annotations.json", _set("labels", ["a"])), "labels"),
    "a pin past the last node": (lambda p: edit_json(p, "annotations.json", _set("pinned", [10**6])), "node 1000000"),
    "1 MB of findings": (lambda p: edit_json(p, "annotations.json", _set("findings", "x" * 1_000_000)), "findings"),
    "a 400 KB label": (lambda p: edit_json(p, "annotations.json", _set("labels", {"0": "y" * 400_000})), "labels"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_content_is_refused_with_one_sentence(saved, tmp_path, case):
    edit, word = HOSTILE[case]
    bad = write(tmp_path / "bad.cdesk", edit(members(saved[0])), rehash=True)
    with pytest.raises(CircuitDeskError) as err:
        load_session(bad)
    message = str(err.value)
    assert word.lower() in message.lower() and "\n" not in message and len(message) < 400, message
    assert message.startswith("bad.cdesk")


def test_hostile_circuit_content_is_refused(saved, tmp_path):
    cases = {
        "scores": lambda p: with_array(p, "edge_scores", np.full_like(arr(p, "edge_scores"), np.inf)),
        "curve": lambda p: edit_json(p, "manifest.json", lambda d: d["circuit"]["curve"]["edges"].pop()),
        "metric_clean": lambda p: edit_json(p, "manifest.json", _set("circuit.metric_clean", "1")),
        "token ids": lambda p: edit_json(p, "manifest.json", lambda d: d["circuit"]["pairs"][0]["clean_ids"].pop()),
    }
    for word, edit in cases.items():
        with pytest.raises(CircuitDeskError, match=word):
            load_session(write(tmp_path / "bad.cdesk", edit(members(saved[1])), rehash=True))


def test_understated_zip_sizes_are_refused_before_memory_grows(tmp_path):
    """A member whose header claims 100 bytes but inflates to 256 MB is refused without inflating it."""
    bomb = tmp_path / "bomb.cdesk"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", b"{}")
        z.writestr("arrays/weight.npy", b"\0" * (256 << 20))
    raw = bytearray(bomb.read_bytes())
    entry = raw.rindex(b"PK\x01\x02")  # the central directory's record of the last member
    raw[entry + 24:entry + 28] = (100).to_bytes(4, "little")  # its uncompressed size
    bomb.write_bytes(bytes(raw))
    assert zipfile.ZipFile(bomb).getinfo("arrays/weight.npy").file_size == 100
    tracemalloc.start()
    with pytest.raises(CircuitDeskError, match="damaged"):
        load_session(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("which", [0, 1], ids=["attribution", "circuit"])
def test_every_edited_member_is_named_by_the_loader_verify_and_report(saved, tmp_path, which):
    """Each member edited in turn (hashes left as saved): load names it, verify names it and fails."""
    from core.report import integrity_note

    path = saved[which]
    assert load_session(path).edited == ()
    parts = members(path)
    for name in [n for n in parts if n != "manifest.json"]:
        if name == "annotations.json":
            changed = edit_json(parts, name, _set("findings", "Rewritten by someone else."))
        else:
            short = name[len("arrays/"):-len(".npy")]
            a = arr(parts, short).copy()
            if a.dtype == bool:  # drop one member of a mask (a circuit stays a circuit)
                a.flat[int(np.flatnonzero(a)[0])] = False
            elif short == "logit_lens":
                a.flat[0] = 0.5 if a.flat[0] < 0.25 else 0.0
            else:
                a.flat[0] = a.flat[0] + 1
            changed = with_array(parts, short, a)
        try:
            s = load_session(write(tmp_path / "e.cdesk", changed))
        except CircuitDeskError as err:  # an edit that breaks consistency is refused, and named
            assert name in str(err), (name, str(err))
            continue
        assert s.edited == (name,), name
        assert name in integrity_note(s)
    s = load_session(write(tmp_path / "e.cdesk", edit_json(parts, "annotations.json", _set("findings", "Edited."))))
    report = verify_session(s)
    assert not report.ok and report.edited == ["annotations.json"]
    assert any("annotations.json" in p for p in report.problems)


RECOMPUTED = {  # array -> the name verify gives its comparison
    "activation": "Activations", "value": "Node values", "logit_weight": "Logit weights", "influence": "Influence",
    "node_mask": "Pruned nodes", "edge_mask": "Pruned edges", "weight": "Edge weights", "logit_lens": "Logit lens",
}


@pytest.mark.parametrize("name", list(RECOMPUTED))
def test_verify_recomputes_every_attribution_array(saved, tmp_path, name):
    """Even with the member hashes forged to match, a changed array is found by recomputation."""
    parts = members(saved[0])
    a = arr(parts, name).copy()
    kind = arr(parts, "kind")
    i = int(np.flatnonzero(kind == 1)[0]) if a.shape == kind.shape else int(np.argmax(np.abs(a))) if a.dtype != bool else 0
    if a.dtype == bool:
        a[i] = not a[i]
    elif name == "logit_lens":
        a.flat[0] = 0.5 if a.flat[0] < 0.25 else 0.0
    elif name == "logit_weight":
        i = int(np.argmax(a))
        a[i] += 0.5
    else:
        a[i] += 1.0
    s = load_session(write(tmp_path / "f.cdesk", with_array(parts, name, a), rehash=True))
    assert s.edited == ()
    report = verify_session(s)
    failed = [c.name for c in report.checks if not c.ok]
    assert not report.ok and RECOMPUTED[name] in failed, (name, failed)
    assert any(RECOMPUTED[name] in p for p in report.problems)


def test_verify_recomputes_circuit_scores_curve_and_metrics(saved, tmp_path):
    parts = members(saved[1])
    cases = {
        "Faithfulness curve": lambda d: d["circuit"]["curve"]["faithfulness"].__setitem__(-1, 0.5),
        "Metrics": _set("circuit.metric_clean", 123.0),
    }
    for check, change in cases.items():
        report = verify_session(load_session(write(tmp_path / "g.cdesk", edit_json(parts, "manifest.json", change))))
        assert not report.ok and check in [c.name for c in report.checks if not c.ok], check
    scores = arr(parts, "edge_scores").copy()
    scores[np.unravel_index(np.argmax(np.abs(scores)), scores.shape)] *= 2
    report = verify_session(load_session(write(tmp_path / "h.cdesk", with_array(parts, "edge_scores", scores), rehash=True)))
    assert not report.ok and "Edge scores" in [c.name for c in report.checks if not c.ok]
