"""Prompt pairs for component circuits: built-in tasks and the user's own JSONL files.

A pair is a clean prompt, a corrupted prompt of the same token length, the answer token(s) the
clean prompt should produce and the counterfactual token(s) the corrupted one points to. The
metric compares the two (logit difference by default). Answers may be sets (greater-than: every
later year), each member one token.

Built-in tasks (``TASKS``), generated from templates in ``resources/tasks`` with a fixed seed:

* ``ioi``: "When Mary and John went to the store, John gave a drink to" → " Mary"; corrupted
  with the names swapped in the second clause ("..., Mary gave a drink to" → " John").
* ``greater-than``: "The war lasted from the year 1732 to the year 17" → any later year; corrupted
  from 01. Two-digit year tokens (GPT-2) or single digits (tokenizers that split numbers: the
  answer is a tens digit above YY's, the counterfactual one below).
* ``induction``: BOS, n random tokens, then the first k again → the (k+1)-th token; corrupted by
  reversing the first occurrence, so every bigram (and what the previous-token head writes)
  changes and induction points to the (k-1)-th token instead (the counterfactual).
* ``factual``: "The capital of France is" → " Paris"; corrupted with another country of the same
  token length, whose capital is the counterfactual.

Generated pairs that do not fit the model's tokenizer (multi-token names, unequal lengths) are
dropped and counted; a user's pair file is strict: the first bad line is an error naming it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from core.attribution.attribute import start_token, with_bos
from core.attribution.targets import resolve_token
from core.errors import CircuitDeskError
from core.paths import read_user_text, resources_dir
from core.predict import encode_prompt, predict_next
from core.prompt import require_prompt
from core.settings import TASK_PAIRS, TASKS, PairSource  # the keys and their labels, declared with the settings

MAX_PAIR_FILE_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupted: str
    answer: tuple[str, ...]
    counterfactual: tuple[str, ...]
    label: str  # where it came from: "line 3", "ioi #5"


@dataclass(frozen=True)
class TokenPair:
    clean: tuple[int, ...]
    corrupted: tuple[int, ...]
    answer: tuple[int, ...]
    counterfactual: tuple[int, ...]
    label: str
    clean_text: str
    corrupted_text: str

    def to_json(self, tokenizer=None) -> dict:
        out = {"label": self.label, "clean": self.clean_text, "corrupted": self.corrupted_text,
               "tokens": len(self.clean), "answer": list(self.answer), "counterfactual": list(self.counterfactual),
               "clean_ids": list(self.clean), "corrupted_ids": list(self.corrupted)}
        if tokenizer is not None:
            out["answer_text"] = [tokenizer.decode([t]) for t in self.answer]
            out["counterfactual_text"] = [tokenizer.decode([t]) for t in self.counterfactual]
        return out


@dataclass
class PairBatch:
    """Pairs of one token length, as tensors."""

    clean: torch.Tensor  # [b, s]
    corrupted: torch.Tensor  # [b, s]
    answer: torch.Tensor  # [b, ka] ids (padded with 0)
    answer_mask: torch.Tensor  # [b, ka] bool
    counterfactual: torch.Tensor  # [b, kc]
    counterfactual_mask: torch.Tensor
    index: list[int]  # positions in the PairSet

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device) -> "PairBatch":
        return PairBatch(*(t.to(device) for t in (self.clean, self.corrupted, self.answer, self.answer_mask,
                                                   self.counterfactual, self.counterfactual_mask)), self.index)


@dataclass
class PairSet:
    task: str
    pairs: list[TokenPair]
    dropped: list[str] = field(default_factory=list)  # one reason per dropped generated pair
    source: str = ""  # pair file path, or "built-in"

    def __len__(self) -> int:
        return len(self.pairs)

    def batches(self, size: int) -> list[PairBatch]:
        """Batches of at most ``size`` pairs, each of one token length (no padding needed)."""
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(self.pairs):
            by_len.setdefault(len(p.clean), []).append(i)
        out = []
        for _, idx in sorted(by_len.items()):
            for k in range(0, len(idx), size):
                out.append(self._batch(idx[k:k + size]))
        return out

    def _batch(self, idx: list[int]) -> PairBatch:
        ps = [self.pairs[i] for i in idx]

        def padded(lists: Sequence[Sequence[int]]):
            width = max(len(x) for x in lists)
            ids = torch.zeros(len(lists), width, dtype=torch.long)
            mask = torch.zeros(len(lists), width, dtype=torch.bool)
            for r, x in enumerate(lists):
                ids[r, : len(x)] = torch.tensor(x)
                mask[r, : len(x)] = True
            return ids, mask

        a, am = padded([p.answer for p in ps])
        c, cm = padded([p.counterfactual for p in ps])
        return PairBatch(torch.tensor([p.clean for p in ps]), torch.tensor([p.corrupted for p in ps]), a, am, c, cm, idx)

    def summary(self) -> dict:
        return {"task": self.task, "source": self.source, "n_pairs": len(self.pairs), "dropped": len(self.dropped),
                "dropped_reasons": self.dropped[:20]}


# -- encoding ---------------------------------------------------------------------------------------
def _answer_ids(model, texts: Sequence[str], what: str, where: str) -> tuple[int, ...]:
    if not texts:
        raise CircuitDeskError(f"{where}: the {what} is empty; give one token (or a list of tokens).")
    out = []
    for t in texts:
        try:
            out.append(resolve_token(model.tokenizer, t, what))
        except CircuitDeskError as e:
            raise CircuitDeskError(f"{where}: {e}") from None
    return tuple(out)


def _encode(model, text: str, prepend_bos: bool, where: str, which: str) -> tuple[int, ...]:
    if not isinstance(text, str) or not text.strip():
        raise CircuitDeskError(f"{where}: the {which} prompt is empty.")
    try:
        ids = encode_prompt(model, text)
        if prepend_bos:
            ids = with_bos(model, ids)
    except CircuitDeskError as e:
        raise CircuitDeskError(f"{where} ({which} prompt): {e}") from None
    return tuple(int(i) for i in ids[0].tolist())


def encode_pairs(model, pairs: Sequence[PromptPair], task: str, *, strict: bool, prepend_bos: bool = True,
                 source: str = "") -> PairSet:
    """Tokenize prompt pairs; ``strict``: the first bad pair is an error, else it is dropped and counted."""
    kept: list[TokenPair] = []
    dropped: list[str] = []
    for p in pairs:
        try:
            clean = _encode(model, p.clean, prepend_bos, p.label, "clean")
            corrupted = _encode(model, p.corrupted, prepend_bos, p.label, "corrupted")
            if len(clean) != len(corrupted):
                raise CircuitDeskError(
                    f"{p.label}: the clean and corrupted prompts are {len(clean)} and {len(corrupted)} tokens "
                    f"long; a pair must tokenize to the same length so positions line up."
                )
            answer = _answer_ids(model, p.answer, "answer", p.label)
            counterfactual = _answer_ids(model, p.counterfactual, "counterfactual", p.label)
        except CircuitDeskError as e:
            if strict:
                raise
            dropped.append(str(e))
            continue
        kept.append(TokenPair(clean, corrupted, answer, counterfactual, p.label, p.clean, p.corrupted))
    return PairSet(task, kept, dropped, source)


# -- the user's pair file ---------------------------------------------------------------------------
def prompt_pair(model, clean: str, corrupted: str, answer: str | None = None, counterfactual: str | None = None,
                prediction=None) -> PairSet:
    """One prompt and its corrupted twin as a one-pair task. The answer and counterfactual default
    to the model's top token on each prompt (``prediction``: the one on ``clean``, if known)."""
    require_prompt(clean)
    require_prompt(corrupted, "The corrupted prompt")
    if answer is None:
        prediction = prediction or predict_next(model, clean, 1)
        answer = f"#{prediction.top[0].token_id}"
    counterfactual = counterfactual or f"#{predict_next(model, corrupted, 1).top[0].token_id}"
    if answer == counterfactual:
        raise CircuitDeskError("Both prompts predict the same top token; give the answer and the counterfactual "
                               "(the corrupted prompt's answer) yourself.")
    pair = PromptPair(clean, corrupted, (answer,), (counterfactual,), "your prompt")
    return encode_pairs(model, [pair], "prompt", strict=True, source="the prompt pair")


def load_pairs(model, path: str | Path, n_pairs: int | None = None, prepend_bos: bool = True) -> PairSet:
    """Pairs from a JSONL file: one ``{"clean", "corrupted", "answer", "counterfactual"}`` object per
    line (answer/counterfactual: a token's text, ``#id``, or a list of them)."""
    path, text = read_user_text(path, "pair file", MAX_PAIR_FILE_BYTES)
    pairs: list[PromptPair] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CircuitDeskError(f"{where} is not valid JSON ({e.msg}).") from None
        if not isinstance(obj, dict):
            raise CircuitDeskError(f"{where} must be a JSON object with clean, corrupted, answer and counterfactual.")
        missing = [k for k in ("clean", "corrupted", "answer", "counterfactual") if k not in obj]
        if missing:
            raise CircuitDeskError(f"{where} has no {', '.join(repr(m) for m in missing)}.")
        for k in ("clean", "corrupted"):
            if not isinstance(obj[k], str):
                raise CircuitDeskError(f"{where}: {k!r} must be a string.")
        answer = _as_tokens(obj["answer"], where, "answer")
        cf = _as_tokens(obj["counterfactual"], where, "counterfactual")
        pairs.append(PromptPair(obj["clean"], obj["corrupted"], answer, cf, where))
        if n_pairs is not None and len(pairs) >= n_pairs:
            break
    if not pairs:
        raise CircuitDeskError(f"The pair file {path} has no pairs; write one JSON object per line.")
    return encode_pairs(model, pairs, task=path.stem, strict=True, prepend_bos=prepend_bos, source=str(path))


def _as_tokens(v, where: str, key: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise CircuitDeskError(f"{where}: {key!r} must be a token's text or a non-empty list of them.")


# -- built-in tasks ---------------------------------------------------------------------------------
def make_task(model, name: str, n_pairs: int = 32, seed: int = 0, prepend_bos: bool = True) -> PairSet:
    """``n_pairs`` pairs of a built-in task for ``model``'s tokenizer (deterministic for a seed)."""
    if name not in TASKS:
        raise CircuitDeskError(f"Unknown task {name!r}; choose one of {', '.join(TASKS)}, or give --pairs FILE.jsonl.")
    if n_pairs < 1:
        raise CircuitDeskError("The number of pairs must be at least 1.")
    rng = random.Random(seed)
    if name == "induction":
        return induction_pairs(model, n_pairs, rng)
    # each maker reads its resource and checks it against the tokenizer once, then draws pairs
    make = TEMPLATE_MAKERS[name](model)
    kept: list[TokenPair] = []
    dropped: list[str] = []
    attempts = 0
    while len(kept) < n_pairs and attempts < 20 * n_pairs + 100:
        batch = [make(rng, f"{name} #{attempts + i + 1}") for i in range(n_pairs - len(kept))]
        attempts += len(batch)
        ps = encode_pairs(model, [p for p in batch if p is not None], name, strict=False, prepend_bos=prepend_bos)
        kept += ps.pairs
        dropped += ps.dropped
    if not kept:
        reason = dropped[0] if dropped else "no template fits the tokenizer"
        raise CircuitDeskError(f"The task {name!r} has no usable pairs for {model.name} ({reason}).")
    return PairSet(name, kept[:n_pairs], dropped, "built-in")


def _resource(name: str) -> dict:
    return json.loads((resources_dir() / "tasks" / name).read_text(encoding="utf-8"))


def _single(model, text: str) -> bool:
    return len(model.tokenizer(text, add_special_tokens=False).input_ids) == 1


def _ioi(model):
    d = _resource("ioi.json")
    names = [n for n in d["names"] if _single(model, " " + n)]

    def make(rng: random.Random, label: str) -> PromptPair | None:
        if len(names) < 2:
            return None
        a, b = rng.sample(names, 2)
        t = rng.choice(d["templates"])
        fill = dict(place=rng.choice(d["places"]), object=rng.choice(d["objects"]))
        clean = t.replace("{A}", a).replace("{B}", b).format(**fill)
        # the second mention of the subject becomes the indirect object: the answer flips to B
        first, _, rest = t.partition("{B}")
        corrupted = (first + "{B}" + rest.replace("{B}", "{A}")).replace("{A}", a).replace("{B}", b).format(**fill)
        return PromptPair(clean, corrupted, (" " + a,), (" " + b,), label)

    return make


def _greater_than(model):
    d = _resource("greater_than.json")
    two_digit_centuries = {c for c in d["centuries"] if _single(model, "32") and _single(model, c)}

    def make(rng: random.Random, label: str) -> PromptPair | None:
        t = rng.choice(d["templates"])
        century = rng.choice(d["centuries"])
        noun = rng.choice(d["nouns"])
        two_digit = century in two_digit_centuries
        yy = rng.randint(2, 98) if two_digit else rng.randint(11, 88)
        clean = t.format(noun=noun, century=century, yy=f"{yy:02d}")
        corrupted = t.format(noun=noun, century=century, yy="01")
        if two_digit:
            answer = tuple(f"{y:02d}" for y in range(yy + 1, 100))
            cf = tuple(f"{y:02d}" for y in range(0, yy + 1))
        else:  # digits are separate tokens: the next token is the tens digit
            tens = yy // 10
            answer = tuple(str(k) for k in range(tens + 1, 10))
            cf = tuple(str(k) for k in range(0, tens))
        return PromptPair(clean, corrupted, answer, cf, label)

    return make


def _factual(model):
    d = _resource("capitals.json")
    usable = [(c, cap) for c, cap in d["capitals"] if _single(model, " " + cap) and c != cap]
    lengths = {(t, c): len(model.tokenizer(t.format(country=c), add_special_tokens=False).input_ids)
               for t in d["templates"] for c, _ in usable}

    def make(rng: random.Random, label: str) -> PromptPair | None:
        if len(usable) < 2:
            return None
        t = rng.choice(d["templates"])
        country, capital = rng.choice(usable)
        others = [(c, cap) for c, cap in usable
                  if c != country and cap != capital and lengths[t, c] == lengths[t, country]]
        if not others:
            return None
        other, other_capital = rng.choice(others)
        return PromptPair(t.format(country=country), t.format(country=other), (" " + capital,), (" " + other_capital,),
                          label)

    return make


# the template tasks' pair makers; induction draws random tokens instead (every key of TASKS is one or the other)
TEMPLATE_MAKERS = {"ioi": _ioi, "greater-than": _greater_than, "factual": _factual}


def plain_token_ids(model, limit: int = 4000, seed: int = 0) -> list[int]:
    """Ordinary word tokens (letters, round-trip through the tokenizer) for random sequences."""
    tok = model.tokenizer
    special = set(getattr(tok, "all_special_ids", []) or [])
    vocab = len(tok)
    rng = random.Random(seed)
    candidates = list(range(vocab))
    rng.shuffle(candidates)
    out = []
    for i in candidates:
        if i in special:
            continue
        s = tok.decode([i])
        if len(s.strip()) < 2 or not s.strip().isalpha():
            continue
        if tok(s, add_special_tokens=False).input_ids != [i]:
            continue
        out.append(i)
        if len(out) >= limit:
            break
    return out


def induction_pairs(model, n_pairs: int, rng: random.Random, length: int = 10, repeat: int = 6,
                    vocab: Sequence[int] | None = None) -> PairSet:
    """Repeated random tokens (see the module docstring); ``vocab``: token ids to draw from."""
    ids = list(vocab) if vocab is not None else plain_token_ids(model)
    if len(ids) < length:
        raise CircuitDeskError(f"{model.name}'s vocabulary has too few plain tokens for the induction task.")
    if not 2 <= repeat < length:
        raise CircuitDeskError("The induction task repeats between 2 and length-1 tokens.")
    bos = start_token(model)
    start = [bos] if bos is not None else []
    dec = model.tokenizer.decode
    pairs = []
    for k in range(n_pairs):
        r = rng.sample(ids, length)
        clean = start + r + r[:repeat]
        corrupted = start + r[::-1] + r[:repeat]
        pairs.append(TokenPair(tuple(clean), tuple(corrupted), (r[repeat],), (r[repeat - 2],), f"induction #{k + 1}",
                               dec(clean), dec(corrupted)))
    return PairSet("induction", pairs, [], "built-in")


def pairs_from_json(rows: Sequence[dict], task: str = "stored") -> PairSet:
    """The pairs a circuit session stored (``TokenPair.to_json``), exactly as they were run."""
    pairs = []
    for i, r in enumerate(rows):
        try:
            ids = [tuple(int(t) for t in r[k]) for k in ("clean_ids", "corrupted_ids", "answer", "counterfactual")]
            pairs.append(TokenPair(*ids, str(r.get("label", f"pair {i}")), str(r["clean"]), str(r["corrupted"])))
        except (KeyError, TypeError, ValueError):
            raise CircuitDeskError(f"Stored pair {i} has no token ids (older session files do not keep them); "
                                   f"it cannot be re-run exactly.") from None
    return PairSet(task, pairs, source="session")


def iter_pairs_json(ps: PairSet, tokenizer=None) -> Iterator[dict]:
    for p in ps.pairs:
        yield p.to_json(tokenizer)


def load_pair_source(source: PairSource, model, prediction=None) -> PairSet:
    """The ``PairSet`` of ``source`` (``prediction``: the model's prediction on its prompt, if
    already known)."""
    source.check()
    if source.task:
        return make_task(model, source.task, n_pairs=source.n_pairs or TASK_PAIRS, seed=source.seed)
    if source.pairs_file:
        return load_pairs(model, source.pairs_file, n_pairs=source.n_pairs)
    return prompt_pair(model, source.prompt, source.corrupted, source.answer, source.counterfactual, prediction)
