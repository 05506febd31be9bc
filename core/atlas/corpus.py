"""The corpus an atlas is built from: the user's files, or text sampled from the model itself.

Files: plain text (one document per file), ``.jsonl`` (one document per line, in its ``text``
field) and ``.csv`` / ``.tsv`` (one document per row, in the ``text`` column, or the one named);
folders are walked in name order. Each document is tokenized on its own and cut into windows of
``context - 1`` tokens (the start token comes first in every window); the token ids go to a flat
int32 file and the windows to a table, so a build (and its resume) reads any window back without
holding the corpus in memory.

Without files, the default corpus is reproducible: ``SAMPLE_PROMPTS`` continued by the model
itself (sampling at temperature 1, top-k 50, a fixed seed) together with the bundled demo prompts
and the built-in tasks' prompts with their answers. It is written once to the cache and recorded,
like any corpus, by name, size, sha256 and token count.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from core.errors import CircuitDeskError
from core.jobs import JobContext
from core.paths import atomic_write, cache_dir, file_sha256, resources_dir
from core.prompt import require_utf8

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".jsonl", ".csv", ".tsv"}  # read when walking a folder
MAX_DOCUMENT_CHARS = 1 << 20  # longer documents are tokenized in pieces of this many characters

# The documented mix the default corpus continues: prose, dialogue, facts, code, lists, numbers,
# instructions and other languages, so that most kinds of text the model meets get windows.
SAMPLE_PROMPTS = (
    "Once upon a time", "The history of", "In the year 1850,", "Breaking news:", "Dear Sir or Madam,",
    "Chapter 1\n\n", "The recipe calls for", "Q: What is the capital of", "The following is a list of",
    "def main():\n", "import numpy as np\n", "<html>\n<head>", "The patient was given", "The court ruled that",
    "In mathematics, a prime number", "The weather today", "She looked at him and said,", "Step 1:",
    "Abstract. We study", "The best way to learn", "My favourite book is", "According to the report,",
    "The city of", "It was a dark and stormy night", "Instructions: Answer the question.\n", "| Name | Age |\n",
    "La ville de Paris", "Der Hund", "1. Introduction\n", "The company announced", "Why do birds",
    "To be or not to be,",
)
SAMPLES_PER_PROMPT = 2
SAMPLE_TOP_K = 50
SAMPLE_BATCH = 32  # texts generated together (decoding is bound by reading the weights: bigger is faster)
SAMPLER_VERSION = 2  # in the cached file's name: a change to the sampling gives a new file


@dataclass(frozen=True)
class Window:
    source: int  # index into the corpus record's sources
    document: int
    offset: int  # of its first content token within the document
    start: int  # of its first content token in the flat token file
    length: int  # content tokens (the start token not counted)


# -- reading files -----------------------------------------------------------------------------------
def corpus_files(paths: list[str | Path]) -> list[Path]:
    """The files the given paths name (folders walked in name order), each checked readable."""
    if not paths:
        raise CircuitDeskError("No corpus was given.")
    out: list[Path] = []
    for given in paths:
        p = Path(given).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            if not found:
                raise CircuitDeskError(f"The corpus folder {p} holds no text files "
                                       f"({', '.join(sorted(TEXT_SUFFIXES))}).")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise CircuitDeskError(f"The corpus file {p} does not exist.")
    return list(dict.fromkeys(out))


def read_documents(path: Path, column: str = "text") -> Iterator[str]:
    """The documents of one corpus file (see the module docstring); a file that is not UTF-8 text
    or not of its kind's shape gets one sentence naming the file and line."""
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="" if suffix in (".csv", ".tsv") else None) as f:
            if suffix == ".jsonl":
                yield from _jsonl(f, path)
            elif suffix in (".csv", ".tsv"):
                yield from _csv(f, path, column, "\t" if suffix == ".tsv" else ",")
            else:
                text = f.read()
                if "\x00" in text:
                    raise CircuitDeskError(f"The corpus file {path} is not text (it holds NUL bytes).")
                if text.strip():
                    yield text
    except UnicodeDecodeError as e:
        raise CircuitDeskError(f"The corpus file {path} is not UTF-8 text (byte {e.start + 1}); convert it "
                               f"to UTF-8.") from None
    except OSError as e:
        raise CircuitDeskError(f"Cannot read the corpus file {path}: {e.strerror or e}.") from None


def _jsonl(f, path: Path) -> Iterator[str]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise CircuitDeskError(f"Line {n} of {path} is not JSON; a .jsonl corpus has one object per line "
                                   f"with a \"text\" field.") from None
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise CircuitDeskError(f"Line {n} of {path} has no \"text\" string field.")
        if text.strip():
            yield require_utf8(text, f"Line {n} of {path}")


def _csv(f, path: Path, column: str, delimiter: str) -> Iterator[str]:
    reader = csv.DictReader(f, delimiter=delimiter)
    if reader.fieldnames is None or column not in reader.fieldnames:
        have = ", ".join(reader.fieldnames or []) or "none"
        raise CircuitDeskError(f"{path} has no column {column!r} (its columns: {have}); name the text column "
                               f"with --column.")
    try:
        for row in reader:
            text = row.get(column) or ""
            if text.strip():
                yield text
    except csv.Error as e:
        raise CircuitDeskError(f"{path} is not a readable CSV file (line {reader.line_num}: {e}).") from None


# -- the default corpus ----------------------------------------------------------------------------------
def default_corpus(model, sample_tokens: int, seed: int, ctx: JobContext | None = None) -> Path:
    """The model-sampled default corpus as a ``.jsonl`` file in the cache (sampled once per model,
    size and seed; reused after)."""
    ctx = ctx or JobContext()
    folder = cache_dir() / "atlas-corpora"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model.fingerprint.sha256[:16]}-v{SAMPLER_VERSION}-seed{seed}-{sample_tokens}.jsonl"
    if path.is_file():
        ctx.progress(1.0, "Sampled corpus found in the cache")
        return path
    docs = [{"text": t, "kind": "sampled"} for t in sample_text(model, sample_tokens, seed, ctx, parts=path)]
    docs += [{"text": t, "kind": "bundled prompt"} for t in bundled_prompts(model, seed)]
    atomic_write(path, lambda fh: fh.write("".join(json.dumps(d, ensure_ascii=False) + "\n"
                                                   for d in docs).encode("utf-8")))
    for part in folder.glob(path.name + ".part*"):
        part.unlink(missing_ok=True)
    return path


def sample_text(model, n_tokens: int, seed: int, ctx: JobContext, parts: Path | None = None) -> list[str]:
    """About ``n_tokens`` tokens the model writes after ``SAMPLE_PROMPTS`` (deterministic for a
    seed on one device): all prompts, left-padded, ``SAMPLES_PER_PROMPT`` each, ``SAMPLE_BATCH``
    at a time. With ``parts``, each batch's texts are kept beside that path as soon as they are
    written, so a cancelled or crashed build resumes its sampling at the batch it stopped in."""
    tok = model.tokenizer
    rows = [p for p in SAMPLE_PROMPTS for _ in range(SAMPLES_PER_PROMPT)]
    new = max(1, math.ceil(n_tokens / len(rows)))
    limit = model.facts.context_length
    if limit:
        new = min(new, max(1, limit - 16))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        pad = 0
    encoded = [tok(p, add_special_tokens=False).input_ids for p in rows]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, width - len(e):] = torch.tensor(e)
        mask[i, width - len(e):] = 1
    texts: list[str] = []
    batch = SAMPLE_BATCH
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            part = None if parts is None else parts.with_name(f"{parts.name}.part{start}")
            if part is not None and part.is_file():
                try:
                    texts += json.loads(part.read_text(encoding="utf-8"))
                    continue
                except (OSError, ValueError):  # a damaged part is sampled again
                    pass
            torch.manual_seed(seed * 100_003 + start)
            out = model.hf.generate(
                input_ids=ids[start:start + batch].to(model.device),
                attention_mask=mask[start:start + batch].to(model.device),
                do_sample=True, temperature=1.0, top_k=SAMPLE_TOP_K, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                pad_token_id=pad, stopping_criteria=_report_each_step(ctx, start, len(rows), width, new),
            )
            done = [row + tok.decode(seq, skip_special_tokens=True)
                    for row, seq in zip(rows[start:start + batch], out[:, width:].tolist())]
            if part is not None:
                atomic_write(part, lambda fh: fh.write(json.dumps(done, ensure_ascii=False).encode("utf-8")))
            texts += done
    return texts


def _report_each_step(ctx: JobContext, start: int, total: int, width: int, new: int):
    """A stopping criterion that never stops generation but reports progress at every step (and
    so raises ``Cancelled`` there when the job is cancelled)."""
    from transformers import StoppingCriteria, StoppingCriteriaList  # deferred: only when sampling

    class Report(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            step = input_ids.shape[1] - width
            done = start * new + step * min(total - start, input_ids.shape[0])
            ctx.progress(done / (total * new), "Sampling the default corpus from the model")
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Report()])


def bundled_prompts(model, seed: int) -> list[str]:
    """The demo prompts and the built-in tasks' prompts, each followed by its answer."""
    from core.circuits.tasks import make_task  # deferred: the task generators only for the default corpus

    demos = json.loads((resources_dir() / "demo_prompts.json").read_text(encoding="utf-8"))["prompts"]
    out = [d["prompt"] for d in demos]
    for task in ("ioi", "greater-than", "factual", "induction"):
        try:
            pairs = make_task(model, task, n_pairs=16, seed=seed, prepend_bos=False)
        except CircuitDeskError:  # a tokenizer the task's templates do not fit: the task is left out
            continue
        for p in pairs.pairs:
            out.append(model.tokenizer.decode(list(p.clean) + [p.answer[0]], skip_special_tokens=True))
    return out


# -- tokenizing into windows --------------------------------------------------------------------------
def source_record(path: Path, kind: str = "file") -> dict:
    return {"name": path.name, "path": str(path.resolve()), "bytes": path.stat().st_size,
            "sha256": file_sha256(path), "kind": kind, "documents": 0, "tokens": 0}


def tokenize_corpus(model, files: list[Path], records: list[dict], content: int, max_tokens: int, folder: Path,
                    column: str = "text", ctx: JobContext | None = None) -> tuple[np.ndarray, int]:
    """Tokenize ``files`` into ``folder/tokens.bin`` (int32) and return the window table
    [W, 5] (source, document, offset, start, length) and the tokens read; ``records`` get their
    documents and tokens counted. At most ``max_tokens`` tokens are read."""
    ctx = ctx or JobContext()
    tok = model.tokenizer
    windows: list[tuple[int, int, int, int, int]] = []
    total = 0
    total_bytes = sum(r["bytes"] for r in records) or 1
    done_bytes = 0
    with open(folder / "tokens.bin", "wb") as out:
        for s, path in enumerate(files):
            for d, text in enumerate(read_documents(path, column)):
                if total >= max_tokens:
                    break
                ids = _tokenize(tok, text)
                ids = ids[:max_tokens - total]
                if not ids:
                    continue
                records[s]["documents"] += 1
                records[s]["tokens"] += len(ids)
                np.asarray(ids, dtype=np.int32).tofile(out)
                for off in range(0, len(ids), content):
                    windows.append((s, d, off, total + off, min(content, len(ids) - off)))
                total += len(ids)
                ctx.progress(min(1.0, max(total / max_tokens, done_bytes / total_bytes)),
                             f"Tokenizing the corpus ({total:,} tokens)")
            done_bytes += records[s]["bytes"]
            if total >= max_tokens:
                break
    if not windows:
        raise CircuitDeskError("The corpus holds no text to build an atlas from.")
    return np.asarray(windows, dtype=np.int64), total


def _tokenize(tok, text: str) -> list[int]:
    if len(text) <= MAX_DOCUMENT_CHARS:
        return tok(text, add_special_tokens=False).input_ids
    out: list[int] = []
    for i in range(0, len(text), MAX_DOCUMENT_CHARS):  # a piece boundary may split one word's tokens
        out += tok(text[i:i + MAX_DOCUMENT_CHARS], add_special_tokens=False).input_ids
    return out
