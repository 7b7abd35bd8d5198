"""What makes each method that method, on hand-made tensors and the shipped tiny student (no training loop)."""

import pytest
import torch
from torch import nn

from cll_ray.config import load_config, method_presets
from cll_ray.engine import TaskModule
from cll_ray.losses import CLLLoss
from cll_ray.methods import METHODS, build_method
from cll_ray.methods.base import TaskSpec
from cll_ray.methods.ewc import OnlineEWC
from cll_ray.methods.replay import ReservoirMemory
from cll_ray.model import TextStudent

BASES = ["finetune_all", "oewc", "er", "der", "lwf", "lora", "mla_adapter", "mla"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def method(name, *overrides):
    return build_method(load_config(method=name, overrides=list(overrides)).method)


@pytest.fixture
def student(shipped_base):
    return TextStudent(shipped_base.clip, shipped_base.tokenizer.eos_id)


def attached(name, student, *overrides):
    m = method(name, *overrides)
    m.attach(student)
    return m


def batch_of(n, student, seed=0, width=6):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 200, (n, width), generator=g)
    ids[:, -1] = student.eos_id  # pooled at EOS
    dim = student.text_projection.shape[1]
    return {"ids": ids, "teacher": torch.randn(n, dim, generator=g), "image": torch.randn(n, dim, generator=g),
            "image_index": torch.arange(n) + 100 * seed}


# ---- presets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", BASES)
def test_teir_composes_with_every_method_through_inherit_from(base):
    presets = method_presets()
    plain, teir = presets[base], presets[f"{base}_teir"]
    assert teir["kind"] == plain["kind"] == base and plain["kind"] in METHODS
    assert teir["init"] == "teir" and teir["grad_scale"] and teir["decay_scale"]
    for key, value in plain.items():  # everything else comes from the method itself
        if key not in ("name", "init", "grad_scale", "decay_scale", "freq_power", "teir_sigma_scale", "teir_mu_shift"):
            assert teir[key] == value, key
    assert type(method(f"{base}_teir")) is type(method(base))


def test_teir_ablation_presets():
    p = {n: load_config(method=n).method for n in method_presets()}
    flags = {n: (p[n].init, p[n].grad_scale, p[n].decay_scale)
             for n in ("cll_clip_teir_init", "cll_clip_teir_grad", "cll_clip_teir_decay", "cll_clip_teir_gd",
                       "cll_clip_teir")}
    assert flags == {"cll_clip_teir_init": ("teir", False, False), "cll_clip_teir_grad": ("normal", True, False),
                     "cll_clip_teir_decay": ("normal", False, True), "cll_clip_teir_gd": ("normal", True, True),
                     "cll_clip_teir": ("teir", True, True)}
    assert p["oewc"].ewc_lambda == 1000.0 and p["oewc"].ewc_gamma == 1.0
    assert p["er"].memory_size == 8000 and p["der"].memory_size == 8000 and p["der"].kind == "der"
    assert p["lora"].lora_rank == 8 and p["lora"].lora_alpha == 8.0
    # mla.md notes: TEIR's init only in _teir presets; mla's 2 + 1 stage epochs = every preset's 3 per language
    assert p["mla"].init == "normal" and p["mla_teir"].init == "teir" and p["mla"].mla_embedding_dim == 768
    assert p["mla"].mla_nlt_epochs + p["mla"].mla_le_epochs == 3
    assert p["mla_joint"].kind == "mla_joint" and p["mla_joint"].init == "normal"
    assert p["joint"].kind == "joint" and p["joint"].init == "normal"


@pytest.mark.parametrize("preset, override, message", [
    ("cll_clip", "method.kind=nope", "unknown method.kind 'nope'"), ("er", "method.memory_size=0", "memory_size"),
    ("mla", "method.mla_embedding_dim=0", "mla_embedding_dim"), ("oewc", "method.ewc_lambda=-1", "ewc_lambda"),
    ("mla", "method.mla_le_epochs=0", "not both 0"), ("joint", "method.joint_vocab_size=-1", "joint_vocab_size"),
    ("lwf", "method.lwf_weight=-1", "lwf_weight"),
])
def test_bad_method_config_is_a_clear_error(preset, override, message):
    overrides = [override] + (["method.mla_nlt_epochs=0"] if "mla_le_epochs" in override else [])
    with pytest.raises(ValueError, match=message):
        method(preset, *overrides)


@pytest.mark.parametrize("preset, override, message", [
    ("lora", "method.lora_rank=0", "lora_rank"), ("mla_adapter", "method.adapter_width=-2", "adapter_width"),
])
def test_bad_module_sizes_fail_when_the_student_is_built(preset, override, message, student):
    with pytest.raises(ValueError, match=message):
        attached(preset, student, override)


# ---- ER / DER ------------------------------------------------------------------------------------------------
def test_reservoir_keeps_everything_until_full_then_counts_every_row():
    memory = ReservoirMemory(capacity=5, seed=0)
    rows = lambda a, b: {"ids": torch.arange(a, b)[:, None], "label": torch.zeros(b - a, 2)}  # noqa: E731
    memory.add(rows(0, 3), "en")
    assert len(memory) == 3 and memory.seen == 3 and memory.rows["ids"].squeeze(1).tolist() == [0, 1, 2]
    memory.add(rows(3, 23), "fr")
    assert len(memory) == 5 and memory.seen == 23
    kept = memory.rows["ids"].squeeze(1).tolist()
    assert len(set(kept)) == 5 and set(kept) <= set(range(23))
    assert [memory.langs[c] for c in memory.lang] == ["en" if i < 3 else "fr" for i in kept]
    again = ReservoirMemory(capacity=5, seed=0)
    again.add(rows(0, 3), "en")
    again.add(rows(3, 23), "fr")
    assert again.rows["ids"].equal(memory.rows["ids"])  # deterministic: the same on every rank
    state = memory.state_dict()
    restored = ReservoirMemory(capacity=1, seed=9)
    restored.load_state_dict(state)
    assert restored.rows["ids"].equal(memory.rows["ids"]) and restored.seen == 23 and len(restored) == 5


def test_reservoir_is_a_uniform_sample():
    hits = torch.zeros(40)
    for seed in range(300):
        memory = ReservoirMemory(capacity=10, seed=seed)
        memory.add({"ids": torch.arange(40)[:, None]}, "en")
        hits[memory.rows["ids"].squeeze(1)] += 1
    rate = hits / 300
    assert rate.mean() == pytest.approx(0.25) and rate.min() > 0.15 and rate.max() < 0.35


@pytest.mark.parametrize("name", ["er", "der"])
def test_replay_batches_are_half_current_half_memory_from_task_two(name, student):
    m = attached(name, student, "method.memory_size=12")
    m.begin_task(TaskSpec("en", ("en",)), 0)
    outputs = {}
    for step in range(3):  # task 1: batches are untouched, the memory fills from every step
        batch = batch_of(8, student, seed=step)
        assert m.extend_batch(batch) is batch
        outputs[step] = torch.randn(8, batch["teacher"].shape[1])
        m.after_step(batch, outputs[step])
    assert len(m.memory) == 12 and m.memory.seen == 24
    stored = m.memory.rows
    m.begin_task(TaskSpec("fr", ("fr",)), 1)
    current = batch_of(8, student, seed=7)
    extended = m.extend_batch(current)
    assert extended["current"].tolist() == [True] * 8 + [False] * 8
    assert extended["ids"][:8, : current["ids"].shape[1]].equal(current["ids"])
    memory_rows = extended["image_index"][8:]
    slot = {int(v): i for i, v in enumerate(stored["image_index"])}
    assert all(int(v) in slot for v in memory_rows)  # memory rows come from the memory, none from the batch
    picked = torch.tensor([slot[int(v)] for v in memory_rows])
    assert extended["teacher"][8:].equal(stored["label"][picked])
    # the stored label: the teacher's English embedding (ER) or the student's own output when stored (DER)
    source = {int(i): (b, r) for b in range(3) for r, i in enumerate(batch_of(8, student, seed=b)["image_index"])}
    for v, label in zip(memory_rows, extended["teacher"][8:], strict=True):
        b, r = source[int(v)]
        expected = outputs[b][r] if name == "der" else batch_of(8, student, seed=b)["teacher"][r]
        assert label.equal(expected)
    # losses: cross-lingual MSE on current rows, replay MSE on memory rows, contrastive over all 16
    module = TaskModule(student, CLLLoss(1.0, 0.01))
    terms = module(extended)
    emb = terms["embedding"]
    assert terms["cross_lingual"].item() == pytest.approx(((emb[:8] - current["teacher"]) ** 2).mean().item(), rel=1e-5)
    replay = m.extra_loss_terms(extended, terms)["replay"]
    assert replay.item() == pytest.approx(((emb[8:] - extended["teacher"][8:]) ** 2).mean().item(), rel=1e-5)
    m.after_step(extended, emb.detach())
    assert m.memory.seen == 32  # only the 8 current rows were offered


def test_memory_tokens_join_the_task_token_set(student):
    m = attached("er", student, "method.memory_size=4")
    m.begin_task(TaskSpec("en", ("en",)), 0)
    batch = batch_of(4, student)
    batch["ids"] = torch.tensor([[0, 11, 12, student.eos_id, 0], [0, 13, student.eos_id, 0, 0]] * 2)
    m.after_step(batch, torch.zeros(4, 128))
    assert m.memory_token_sets()["en"].tolist() == [11, 12, 13]  # between BOS and EOS, no padding


# ---- oEWC ----------------------------------------------------------------------------------------------------
class Toy(nn.Module):
    """A stand-in task module: ``student`` with one weight; loss = mean((w · x − y)²)."""

    def __init__(self) -> None:
        super().__init__()
        self.student = nn.Module()
        self.student.w = nn.Parameter(torch.tensor([1.0, -2.0]))
        self.student.freeze_backbone = lambda: None

    def forward(self, batch):
        return {"loss": ((self.student.w * batch["ids"]).sum(dim=1) - batch["y"]).pow(2).mean()}


def test_ewc_penalty_on_a_hand_made_fisher(student):
    m = attached("oewc", student)
    w = student.token_embedding.weight
    fisher = torch.zeros_like(w)
    fisher[3, :2] = torch.tensor([2.0, 0.5])
    anchor = w.detach().clone()
    anchor[3, :2] -= torch.tensor([1.0, 2.0])  # θ − θ* = (1, 2) on two entries, 0 elsewhere
    m.fisher, m.anchor = {"token_embedding.weight": fisher}, {"token_embedding.weight": anchor}
    term = m.extra_loss_terms({}, {})["ewc"]
    assert term.item() == pytest.approx(1000 * (2.0 * 1 + 0.5 * 4), rel=1e-5)
    term.backward()
    expected = torch.zeros_like(w)
    expected[3, :2] = 1000 * 2 * torch.tensor([2.0 * 1, 0.5 * 2])
    torch.testing.assert_close(w.grad, expected)
    # the vocabulary grows: Fisher and θ* are zero-padded on the new rows
    student.token_embedding.grow(w.shape[0] + 5, 0.0, 0.02)
    m.begin_task(TaskSpec("fr", ("fr",)), 1)
    assert m.fisher["token_embedding.weight"].shape == student.token_embedding.weight.shape
    assert m.fisher["token_embedding.weight"][-5:].abs().sum() == 0
    assert m.extra_loss_terms({}, {})["ewc"].item() == pytest.approx(term.item(), rel=1e-5)


def test_ewc_fisher_is_mean_squared_batch_gradient_accumulated_with_gamma():
    toy = Toy()
    m = OnlineEWC(load_config(method="oewc", overrides=["method.ewc_gamma=0.5"]).method)
    m.attach(toy.student)
    batches = [{"ids": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "y": torch.tensor([0.0, 0.0])},
               {"ids": torch.tensor([[2.0, 1.0]]), "y": torch.tensor([1.0])}]
    grads = []
    for b in batches:
        toy.zero_grad()
        toy(b)["loss"].backward()
        grads.append(toy.student.w.grad.clone())
    f1 = (grads[0] ** 2 + grads[1] ** 2) / 2
    train = load_config().train
    m.after_training(toy, lambda: iter(batches), train)
    m.end_task("en")
    torch.testing.assert_close(m.fisher["w"], f1)
    torch.testing.assert_close(m.anchor["w"], toy.student.w.detach())  # θ* = the weights the task ends with
    assert toy.student.w.grad is None  # the Fisher pass leaves no gradient behind
    m.after_training(toy, lambda: iter(batches), train)
    m.end_task("fr")
    torch.testing.assert_close(m.fisher["w"], 0.5 * f1 + f1)  # F ← γ·F + F_new


# ---- LoRA / adapters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "mla_adapter"])  # mla: tests/test_mla.py
def test_language_banks_route_by_language_and_freeze(name, student):
    batch = batch_of(4, student)
    base_out = student(batch["ids"]).detach()
    m = attached(name, student)
    m.begin_task(TaskSpec("en", ("en",)), 0)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert "token_embedding.weight" in trainable and all(".en." in n for n in trainable - {"token_embedding.weight"})
    assert len(trainable) > 1
    if name == "lora":  # B = 0: a new LoRA bank starts as the identity
        torch.testing.assert_close(student(batch["ids"]), base_out)
        assert len(m.sites) == len(student.transformer.resblocks)
        pair = m.sites[0].banks["en"]
        assert pair.a_q.shape == (8, student.transformer.width) and pair.b_v.abs().sum() == 0
    else:  # width/2 bottleneck after every block, N(0, 0.02) weights, zero biases
        bank = m.sites[0].banks["en"]
        assert bank.down.out_features == student.transformer.width // 2 and bank.up.bias.abs().sum() == 0
        assert bank.down.weight.std().item() == pytest.approx(0.02, rel=0.1)
    with torch.no_grad():
        for p in m.language_parameters("en"):
            p.add_(0.05)
    en_out = student(batch["ids"]).detach()
    m.end_task("en")
    assert not any(p.requires_grad for p in m.language_parameters("en"))
    m.begin_task(TaskSpec("fr", ("fr",)), 1)
    assert not any(p.requires_grad for p in m.language_parameters("en"))
    assert all(p.requires_grad for p in m.language_parameters("fr"))
    with torch.no_grad():
        for p in m.language_parameters("fr"):
            p.sub_(0.05)
    fr_out = student(batch["ids"]).detach()
    m.activate("en")
    torch.testing.assert_close(student(batch["ids"]), en_out)  # routed to en: en's modules only
    m.activate(None)
    torch.testing.assert_close(student(batch["ids"]), base_out)
    assert not torch.allclose(en_out, fr_out)
    # the banks travel in the method state (tensors and plain values) and come back routed the same way
    fresh_student = TextStudent(student_clip_of(student), student.eos_id)
    fresh = attached(name, fresh_student)
    fresh.load_state_dict(torch.load(_save(m.state_dict()), weights_only=True))
    fresh_student.token_embedding.load_state_dict(student.token_embedding.state_dict())
    fresh.activate("fr")
    torch.testing.assert_close(fresh_student(batch["ids"]), fr_out)
    assert not any(p.requires_grad for p in fresh.language_parameters("fr"))


def student_clip_of(student):
    """A CLIP-like holder of the student's original tower (LoRA wrapped attention unwrapped) for a fresh copy."""
    import copy

    holder = nn.Module()
    holder.token_embedding = nn.Embedding.from_pretrained(student.token_embedding.weight.detach().clone())
    tower = copy.deepcopy(student.transformer)
    for block in tower.resblocks:
        if hasattr(block.attn, "banks"):
            block.attn = block.attn.attn
    holder.transformer, holder.ln_final = tower, student.ln_final
    holder.positional_embedding, holder.text_projection = student.positional_embedding, student.text_projection
    holder.register_buffer("attn_mask", student.attn_mask)
    return holder


def _save(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
