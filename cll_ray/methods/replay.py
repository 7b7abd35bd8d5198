"""Experience replay (method.md §7 ``ER``) and dark experience replay (``DER``).

A reservoir memory of training rows is updated after every step (all epochs, task 1 included) with the
batch's current-task rows. From task 2 each batch is the current batch plus as many memory rows (the
reference's 128 + 128 with ``double_batch_size``). Loss: the cross-lingual MSE on current rows, the contrastive
term over all rows, and ``replay_weight · MSE(s(x_mem), stored label)`` on memory rows; the stored label is the
teacher's English embedding (ER) or the student's own output when the row was stored (DER). Under TEIR the
memory captions' tokens join T_t (§2.2b).

Data parallel: every rank inserts the rows of all ranks (gathered in rank order), so the memory is the same on
every rank and in the rank-0 checkpoint; each rank draws its memory half with its own seeded generator.
Memory captions are stored as token ids (the reference stores text and re-tokenizes it with the current
tokenizer; growth only appends tokens, so stored ids stay valid, but later merges are not applied to them).
"""

from __future__ import annotations

import numpy as np
import torch

from cll_ray.losses import cross_lingual_mse
from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP
from cll_ray.parallel import data_parallel_rank, gather_rows


class ReservoirMemory:
    """A fixed-capacity reservoir sample of every row offered so far (Vitter's algorithm R), on the CPU."""

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity <= 0:
            raise ValueError(f"method.memory_size must be > 0, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self.size = 0
        self.store: dict[str, torch.Tensor] = {}  # preallocated (capacity, ...) tensors; the first ``size`` used
        self.codes = torch.zeros(capacity, dtype=torch.long)  # language of each slot, an index into ``langs``
        self.langs: list[str] = []
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def rows(self) -> dict[str, torch.Tensor]:
        return {k: v[: self.size] for k, v in self.store.items()}

    @property
    def lang(self) -> torch.Tensor:
        return self.codes[: self.size]

    def add(self, rows: dict[str, torch.Tensor], lang: str) -> None:
        """Offer each row once: kept while the memory has room, then at a uniform slot with prob. capacity/seen."""
        rows = {k: v.detach().cpu() for k, v in rows.items()}
        if lang not in self.langs:
            self.langs.append(lang)
        code = self.langs.index(lang)
        if not self.store:
            self.store = {k: v.new_zeros((self.capacity, *v.shape[1:])) for k, v in rows.items()}
        for i in range(len(rows["ids"])):
            self.seen += 1
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                slot = int(torch.randint(0, self.seen, (1,), generator=self.generator))
                if slot >= self.capacity:
                    continue
            for k, v in rows.items():
                self.store[k][slot] = v[i]
            self.codes[slot] = code

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "rows": self.rows, "lang": self.lang.clone(),
                "langs": list(self.langs), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.seen = int(state["capacity"]), int(state["seen"])
        self.size = len(state["lang"])
        self.store = {k: torch.cat([v, v.new_zeros((self.capacity - self.size, *v.shape[1:]))])
                      for k, v in state["rows"].items()}
        self.codes = torch.zeros(self.capacity, dtype=torch.long)
        self.codes[: self.size] = state["lang"]
        self.langs = list(state["langs"])
        self.generator.set_state(state["generator"])


class ExperienceReplay(CLLCLIP):
    """ER; ``dark=True`` (DER) stores the student's output instead of the teacher embedding."""

    dark = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.memory = ReservoirMemory(cfg.memory_size, seed=0)  # one fixed stream: identical on every rank
        self.replay: dict[str, torch.Tensor] = {}  # the memory as it was when the task started
        self.lang = ""
        self.sampler: torch.Generator | None = None

    def begin_task(self, task: TaskSpec, index: int) -> None:
        super().begin_task(task, index)
        self.lang = task.name
        self.replay = {k: v.clone() for k, v in self.memory.rows.items()} if len(self.memory) else {}
        rank, _ = data_parallel_rank()
        self.sampler = torch.Generator().manual_seed(10_007 * (index + 1) + rank)

    def memory_token_sets(self) -> dict[str, np.ndarray]:
        if not len(self.memory):
            return {}
        ids = self.memory.rows["ids"]
        positions = torch.arange(ids.shape[1])
        eos = torch.where(ids == self.student.eos_id, positions, ids.shape[1]).min(dim=1).values  # first EOS
        inside = (positions >= 1) & (positions < eos[:, None])  # between BOS and EOS
        out = {}
        for code, lang in enumerate(self.memory.langs):
            rows = self.memory.lang == code
            out[lang] = np.unique(ids[rows][inside[rows]].numpy())
        return out

    def extend_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.replay:
            return batch  # task 1: no memory yet
        size = len(batch["ids"])
        available = len(self.replay["ids"])
        pick = (torch.randperm(available, generator=self.sampler)[:size] if available >= size
                else torch.randint(0, available, (size,), generator=self.sampler))
        memory = {k: v[pick].to(batch["ids"].device) for k, v in self.replay.items()}
        width = max(batch["ids"].shape[1], memory["ids"].shape[1])
        ids = torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in (batch["ids"], memory["ids"])])
        current = torch.zeros(2 * size, dtype=torch.bool, device=ids.device)
        current[:size] = True
        return {"ids": ids, "teacher": torch.cat([batch["teacher"], memory["label"]]),
                "image": torch.cat([batch["image"], memory["image"]]),
                "image_index": torch.cat([batch["image_index"], memory["image_index"]]), "current": current}

    def extra_loss_terms(self, batch: dict, terms: dict) -> dict[str, torch.Tensor]:
        if "current" not in batch:
            return {}
        memory = ~batch["current"]
        return {"replay": self.cfg.replay_weight * cross_lingual_mse(terms["embedding"][memory], batch["teacher"][memory])}

    def after_step(self, batch: dict[str, torch.Tensor], embedding: torch.Tensor) -> None:
        rows = batch["current"] if "current" in batch else slice(None)
        ids = batch["ids"][rows]
        context = self.student.context_length
        new = {"ids": torch.nn.functional.pad(ids, (0, context - ids.shape[1])),
               "label": (embedding if self.dark else batch["teacher"])[rows].float(),
               "image": batch["image"][rows], "image_index": batch["image_index"][rows]}
        self.memory.add(gather_rows(new), self.lang)

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.memory.load_state_dict(state["memory"])


class DarkExperienceReplay(ExperienceReplay):
    dark = True
