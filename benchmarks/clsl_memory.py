"""Peak memory and step time of the CLSL head: mlrkit's (chunked label attention) vs the released
model's head, re-implemented here from a reading of Qingdandian/CLSL ``models/sarlp.py`` and
``lib/aslloss.py`` at ``2f9e916a21`` (``docs/methods.md`` §3).

The reference head (:class:`ReferenceHead`) follows the release operation by operation: post-norm
encoder layer with the sine encoding on queries and keys, the label MLP on ``[e_c ; mean token]``,
the max-pooled auxiliary branch, the literal low-rank bilinear attention with ``(B, C, P, K)``
materialised, the position-wise MLP and self-weighted pooling, and the released loss
(``1000 x`` sum of ASL over the known entries ``+ 0.8 x 1000 x`` mean ASL of the auxiliary branch
against ``sigmoid(l1 * max l1)`` recovered targets). mlrkit's head is
:class:`~mlrkit.methods.clsl.CLSL` with ``recovery="released"`` and ``loss_options={"reduction":
"sum"}``, whose loss is then the released one divided by 1000.

Variants: ``reference``, ``mlrkit`` (chunked attention, ``class_chunk``, and the factorised label
MLP and classifier) and ``mlrkit-direct`` (mlrkit's head with the literal formulas). Each (variant,
mode) runs in a fresh subprocess; the peak is measured as in ``benchmarks/decoupling_memory.py``
(its helpers are reused): CPU ``ru_maxrss`` after the run minus the resident set size before it,
with glibc's mmap threshold fixed at 64 KiB, after a batch-1 warm-up; CUDA
``max_memory_allocated`` minus ``memory_allocated``. The time comes from a second fresh
subprocess with glibc's default settings: under the fixed threshold every large allocation is a
fresh ``mmap`` whose pages fault in on first touch, which slows every variant (the chunked one
most: 2.7 s instead of 1.8 s per step here), and users do not run that way.
Modes: ``forward`` (eval, ``torch.no_grad()``) and ``fwd+bwd`` (train mode, the training loss
backpropagated). A separate worker copies the reference's weights into mlrkit's head and checks
that the logits of both branches (eval) and the training loss and gradients (train mode with
dropout off) agree.

The last lines printed are ``clsl_outputs_equal=``, ``clsl_memory_ratio=`` (reference peak /
mlrkit peak, ``fwd+bwd``) and ``clsl_speedup=`` (reference time / mlrkit time, ``fwd+bwd``). The
table and these figures go to ``<out-dir>/clsl_memory.md`` and ``.json`` (default
``benchmarks/results/``; with ``--quick`` the system temp folder).

Usage: ``python benchmarks/clsl_memory.py`` (batch 8, 14 x 14 tokens, 80 classes, d 2048, E 768,
K 1024), ``python benchmarks/clsl_memory.py --quick --out-dir /tmp/clsl`` for a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from decoupling_memory import fresh_worker, peak_and_time, peak_then_time
from torch import Tensor, nn

from mlrkit.methods.base import TaskSpec
from mlrkit.methods.clsl import CLSL

MODES = ("forward", "fwd+bwd")
VARIANTS = ("reference", "mlrkit", "mlrkit-direct")
MIB = 2**20
QUICK = {"batch": 2, "side": 4, "classes": 10, "dim": 64, "embed_dim": 32, "att_dim": 32,
         "repeats": 1}


# ---------------------------------------------------------------- the reference head


class ReferenceEncoderLayer(nn.Module):
    """The release's post-norm ``TransformerEncoderLayer`` (``forward_post``)."""

    def __init__(self, dim: int, heads: int, ffn: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.dropout1, self.dropout2 = (nn.Dropout(dropout) for _ in range(3))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        q = k = src + pos
        attended, _ = self.self_attn(q, k, value=src)  # need_weights left at its default, True
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(hidden))


def reference_position_buffer(dim: int, side: int) -> Tensor:
    """The release's ``PositionEmbeddingSine(dim // 2, normalize=True)`` buffer, ``(1, dim, side,
    side)``: cumulative sums of ones normalised by the last row / column, times 2 pi."""
    steps, eps, scale = dim // 2, 1e-6, 2 * math.pi
    ones = torch.ones(1, side, side)
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = 10000 ** (2 * (torch.arange(steps, dtype=torch.float32) // 2) / steps)
    pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class ReferenceBilinear(nn.Module):
    """The release's ``LowRankBilinearAttention``: ``(B, C, P, K)`` materialised."""

    def __init__(self, dim1: int, dim2: int, att_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim1, att_dim, bias=False)
        self.linear2 = nn.Linear(dim2, att_dim, bias=False)
        self.hidden_linear = nn.Linear(att_dim, att_dim)
        self.target_linear = nn.Linear(att_dim, 1)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        a = self.linear1(x1).unsqueeze(1)  # (B, 1, P, K)
        b = self.linear2(x2).unsqueeze(2)  # (B, C, 1, K)
        return self.target_linear(self.hidden_linear(torch.tanh(a * b))).squeeze(-1)  # (B, C, P)


def released_asl(x: Tensor, y: Tensor, masked: bool, gamma_neg: float = 2.0,
                 gamma_pos: float = 0.0, eps: float = 1e-5) -> Tensor:
    """``AsymmetricLossOptimized`` (clip 0, focusing weight without gradient): with ``masked``
    the sum over entries ``y != -1`` times 1000, else the sum / B / C times 1000."""
    if masked:
        keep = y.reshape(-1) != -1
        p, y = torch.sigmoid(x).reshape(-1)[keep], y.reshape(-1)[keep]
    else:
        p = torch.sigmoid(x)
    q = 1.0 - p
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    with torch.no_grad():
        w = torch.pow(1 - p * y - q * (1 - y), gamma_pos * y + gamma_neg * (1 - y))
    loss = loss * w
    if masked:
        return -loss.sum() * 1000
    return -loss.sum() / x.size(0) / y.size(1) * 1000


class ReferenceHead(nn.Module):
    """The released SARLP model after its backbone, on ``(B, P, d)`` tokens."""

    def __init__(self, embeddings: Tensor, dim: int, side: int, classes: int, att_dim: int,
                 heads: int = 8) -> None:
        super().__init__()
        text_dim = embeddings.shape[1]
        self.embeddings = embeddings  # a plain tensor in the release (BERT vectors from .npy)
        self.register_buffer("pe", reference_position_buffer(dim, side))
        self.encoder_layers = nn.ModuleList([ReferenceEncoderLayer(dim, heads, ffn=dim)])
        self.attention2 = ReferenceBilinear(dim, dim, att_dim)
        self.fc0 = nn.Conv1d(dim, classes, 1)
        self.fc2 = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Dropout(),
                                 nn.Linear(2 * dim, classes))
        self.gsp = nn.AdaptiveAvgPool1d(1)
        self.ttd = nn.Sequential(nn.Conv1d(text_dim + dim, text_dim + dim, 1),
                                 nn.BatchNorm1d(text_dim + dim), nn.GELU(),
                                 nn.Conv1d(text_dim + dim, dim, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens ``(B, P, d)`` → ``(logits0, logits1)``."""
        pos = torch.flatten(self.pe.repeat(x.size(0), 1, 1, 1), 2).transpose(1, 2)
        for layer in self.encoder_layers:
            x = layer(x, pos)
        x_g = self.gsp(x.transpose(1, 2)).transpose(1, 2)
        v = self.embeddings.unsqueeze(0).repeat(x.shape[0], 1, 1)
        vx = torch.cat((v, x_g.repeat(1, v.shape[1], 1)), dim=-1)
        v = self.ttd(vx.transpose(1, 2)).transpose(1, 2)
        alpha0 = self.fc0(x.transpose(1, 2))
        logits0 = alpha0.topk(1, dim=-1)[0].mean(dim=-1)
        alpha2 = self.attention2(x, v).transpose(1, 2)  # (B, P, C)
        f = torch.cat((torch.matmul(torch.softmax(alpha2, dim=-1), v), x), dim=-1)
        alpha3 = self.fc2(f)
        logits1 = torch.mul(torch.softmax(alpha3, dim=1), alpha3).sum(dim=1)
        return logits0, logits1

    @staticmethod
    def loss(logits0: Tensor, logits1: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """The released training loss for ``partial < 1``; ``y`` 1 / 0 / -1, ``mask`` 1 on known."""
        pre1 = torch.sigmoid(logits1 * logits1.max(dim=1, keepdim=True).values)
        y_sam = (1 - mask) * pre1 + mask * y
        bce0 = released_asl(logits0, y_sam.detach(), masked=False)
        bce1 = released_asl(logits1, y, masked=True)
        return 1 * bce1 + 0.8 * bce0


# ---------------------------------------------------------------- building and copying

#: reference parameter prefix -> mlrkit parameter prefix
NAME_MAP = {
    "encoder_layers.0.": "encoder.0.",
    "ttd.": "label_mlp.",
    "fc0.": "aux_head.",
    "attention2.": "attention.",
    "fc2.": "classifier.",
}


#: reference parameters whose gradient is zero in exact arithmetic: the attention's biases shift
#: every class's score alike (softmax over classes), the label MLP's first bias precedes BatchNorm
CANCELLING = ("attention2.hidden_linear.bias", "attention2.target_linear.bias", "ttd.0.bias")


def make_task(args: argparse.Namespace) -> tuple[TaskSpec, Tensor, Tensor]:
    """The task, the inputs ``(B, d, side, side)`` and the observed targets (known at 0.1)."""
    rng = np.random.default_rng(0)
    truth = rng.random((args.batch, args.classes)) < 0.1
    known = rng.random((args.batch, args.classes)) < 0.1
    targets = torch.from_numpy(np.where(known, truth, -1).astype(np.int8))
    embeddings = torch.from_numpy(rng.normal(size=(args.classes, args.embed_dim))).float()
    spec = TaskSpec(args.classes, (args.dim, args.side, args.side),
                    np.zeros((4, args.classes), dtype=np.int8), embeddings)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(args.batch, args.dim, args.side, args.side, generator=generator)
    return spec, inputs, targets


def build(args: argparse.Namespace, variant: str, device: torch.device) -> nn.Module:
    spec, _, _ = make_task(args)
    torch.manual_seed(0)
    if variant == "reference":
        return ReferenceHead(spec.label_embeddings.to(device), args.dim, args.side, args.classes,
                             args.att_dim).to(device)
    return CLSL(spec, image_dim=None, att_dim=args.att_dim, class_chunk=args.class_chunk,
                recovery="released", loss_options={"reduction": "sum"}).to(device)


def copy_reference_weights(reference: ReferenceHead, ours: CLSL) -> None:
    """Load the reference head's parameters and BatchNorm buffers into mlrkit's head."""
    state = {}
    for name, value in reference.state_dict().items():
        if name == "pe":
            continue
        prefix = next(p for p in NAME_MAP if name.startswith(p))
        state[NAME_MAP[prefix] + name[len(prefix):]] = value
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) == {"label_embeddings"}, (missing, unexpected)


def run_once(model: nn.Module, variant: str, inputs: Tensor, targets: Tensor, mode: str) -> None:
    """One pass: ``forward`` in eval mode without autograd, or a training step's fwd+bwd."""
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            if variant == "reference":
                model(inputs.flatten(2).transpose(1, 2))
            else:
                model.branches(inputs, direct=variant == "mlrkit-direct")
        return
    model.train()
    model.zero_grad(set_to_none=True)
    if variant == "reference":
        y = targets.float()
        logits0, logits1 = model(inputs.flatten(2).transpose(1, 2))
        loss = model.loss(logits0, logits1, y, (targets >= 0).float())
    else:
        loss = model(inputs, targets, direct=variant == "mlrkit-direct").loss
    loss.backward()


# ---------------------------------------------------------------- workers


def measure(args: argparse.Namespace, variant: str, mode: str) -> dict:
    """Peak extra memory (bytes) and median time (s) of one variant, in this process."""
    device = torch.device(args.device)
    model = build(args, variant, device)
    _, inputs, targets = make_task(args)
    inputs, targets = inputs.to(device), targets.to(device)
    return peak_and_time(model, lambda: run_once(model, variant, inputs, targets, mode),
                         lambda: run_once(model, variant, inputs[:1], targets[:1], mode), device,
                         args.repeats)


def max_difference(a: Tensor, b: Tensor) -> tuple[float, bool]:
    """Largest absolute difference and whether ``a`` and ``b`` agree to 1e-5 (abs and rel)."""
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return diff, bool(torch.allclose(a, b, atol=1e-5, rtol=1e-5))


def check(args: argparse.Namespace) -> dict:
    """Same weights in both heads: logits (eval), loss and gradients (train, dropout off)."""
    device = torch.device(args.device)
    reference, ours = build(args, "reference", device), build(args, "mlrkit", device)
    copy_reference_weights(reference, ours)
    _, inputs, targets = make_task(args)
    inputs, targets = inputs.to(device), targets.to(device)
    tokens = inputs.flatten(2).transpose(1, 2)
    result = {}
    reference.eval(), ours.eval()
    with torch.no_grad():
        ref0, ref1 = reference(tokens)
        out = ours.branches(inputs)
    result["main_logits"] = max_difference(out.main, ref1)
    result["aux_logits"] = max_difference(out.aux, ref0)
    for model in (reference, ours):
        model.train()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            elif isinstance(module, nn.MultiheadAttention):
                module.dropout = 0.0
    ref_loss = reference.loss(*reference(tokens), targets.float(), (targets >= 0).float())
    ref_loss.backward()
    our_loss = ours(inputs, targets).loss * 1000  # mean aux, summed main: the released / 1000
    our_loss.backward()
    result["loss"] = (abs(float(our_loss) - float(ref_loss)) / abs(float(ref_loss)),
                      math.isclose(float(our_loss), float(ref_loss), rel_tol=1e-5))
    # our_loss (mlrkit's loss x 1000) is the released loss, so the gradients compare as they are,
    # each tensor relative to its largest entry. The CANCELLING parameters get zero gradient in
    # exact arithmetic (rounding noise in both heads): they are checked to be ~0 instead.
    ours_params = dict(ours.named_parameters())
    pairs = {}
    for name, param in reference.named_parameters():
        prefix = next(p for p in NAME_MAP if name.startswith(p))
        pairs[name] = (ours_params[NAME_MAP[prefix] + name[len(prefix):]].grad, param.grad)
    largest = max(float(theirs.abs().max()) for _, theirs in pairs.values())
    worst = max(float((mine - theirs).abs().max()) / max(float(theirs.abs().max()), 1e-30)
                for name, (mine, theirs) in pairs.items() if name not in CANCELLING)
    noise = max(float(g.abs().max()) for name in CANCELLING for g in pairs[name]) / largest
    result["gradients"] = (worst, worst < 1e-4)
    result["cancelling_gradients"] = (noise, noise < 1e-6)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=14, help="feature map is side x side")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dim", type=int, default=2048, help="token size d (no projection)")
    parser.add_argument("--embed-dim", type=int, default=768)
    parser.add_argument("--att-dim", type=int, default=1024)
    parser.add_argument("--class-chunk", type=int, default=4, help="the head's default: 4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke test: " + json.dumps(QUICK))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where clsl_memory.md and .json go (default: benchmarks/results, "
                             "with --quick the temp folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.worker:
        task = json.loads(args.worker)
        print(json.dumps(check(args) if task[0] == "check" else measure(args, *task)))
        return

    header = (
        f"CLSL head: B={args.batch} P={args.side**2} C={args.classes} d={args.dim} "
        f"E={args.embed_dim} K={args.att_dim} class_chunk={args.class_chunk} "
        f"device={args.device} threads={torch.get_num_threads()}"
    )
    print(header)
    checked = fresh_worker(__file__, ["check"])
    equal = all(ok for _, ok in checked.values())
    measures = {"main_logits": "max |difference|", "aux_logits": "max |difference|",
                "loss": "relative difference",
                "gradients": "max |difference| / max |gradient|, worst tensor",
                "cancelling_gradients": "max |gradient| / largest gradient (should be ~0)"}
    check_lines = [f"{name}: {measures[name]} {value:.3g} -> {'ok' if ok else 'DIFFERENT'}"
                   for name, (value, ok) in checked.items()]
    for line in check_lines:
        print(line)
    print(f"{'variant':<14} {'mode':<8} {'peak MiB':>10} {'time s':>8}")
    results: dict[tuple[str, str], dict] = {}
    records, rows = [], []
    for mode in MODES:
        for variant in VARIANTS:
            result = peak_then_time(__file__, [variant, mode])
            results[variant, mode] = result
            flag = "" if result["exact"] else "*"
            print(f"{variant:<14} {mode:<8} {result['peak'] / MIB:>9.1f}{flag:1} "
                  f"{result['time']:>8.3f}")
            records.append({"variant": variant, "mode": mode, "peak_bytes": result["peak"],
                            "peak_MiB": result["peak"] / MIB, "exact": result["exact"],
                            "time_s": result["time"]})
            rows.append([variant, mode, f"{result['peak'] / MIB:.1f}{flag}",
                         f"{result['time']:.3f}"])
    ratios = {mode: results["reference", mode]["peak"] / max(results["mlrkit", mode]["peak"], 1)
              for mode in MODES}
    speedups = {mode: results["reference", mode]["time"] / results["mlrkit", mode]["time"]
                for mode in MODES}
    ratio_lines = [f"reference / mlrkit, {mode}: peak {ratios[mode]:.2f}, time {speedups[mode]:.2f}"
                   for mode in MODES]
    for line in ratio_lines:
        print(line)
    key_lines = [f"clsl_outputs_equal={equal}",
                 f"clsl_memory_ratio={ratios['fwd+bwd']:.2f}",
                 f"clsl_speedup={speedups['fwd+bwd']:.2f}"]

    # Imported only now that every worker has run: a worker's ru_maxrss starts at this process's
    # peak resident set (Linux carries it over fork and exec), and recipe_grid's imports (the
    # training engine) would raise it.
    from recipe_grid import ROOT, markdown_table, write_result

    if args.out_dir is not None:
        out_dir = args.out_dir
    elif args.quick:
        out_dir = Path(tempfile.gettempdir()) / "mlrkit-benchmarks"
    else:
        out_dir = ROOT / "benchmarks" / "results"
    device = args.device
    if torch.device(device).type == "cuda":
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    peak_source = ("`torch.cuda.max_memory_allocated()` minus `memory_allocated()` before the run"
                   if torch.device(args.device).type == "cuda" else
                   "CPU `ru_maxrss` after the run minus the resident set size before it "
                   "(`MALLOC_MMAP_THRESHOLD_=65536`)")
    body = [
        (f"Device {device}. `reference`: the released head re-implemented from "
         "Qingdandian/CLSL `models/sarlp.py` (literal `(B, C, P, K)` attention, released loss); "
         f"`mlrkit`: `mlrkit.methods.clsl.CLSL`, class chunks of {args.class_chunk} with "
         "activation checkpointing; `mlrkit-direct`: the same head with the literal attention. "
         f"Each (variant, mode) runs in a fresh subprocess; peak extra memory: {peak_source}, "
         "after a batch-1 warm-up. `*`: an upper bound (the run did not raise `ru_maxrss`). "
         f"Time: median of {args.repeats}, in another fresh subprocess with glibc's default "
         "allocator settings (the fixed mmap threshold that the peak needs makes every large "
         "allocation a fresh mmap). `forward`: eval mode under `torch.no_grad()`; "
         "`fwd+bwd`: train mode, the training loss backpropagated."),
        "",
        header,
        "",
        ("Same weights (reference copied into mlrkit's head, `recovery=\"released\"`, main loss "
         "summed; loss x 1000 compared):"),
        "",
        *[f"- {line}" for line in check_lines],
        "",
        *markdown_table(["variant", "mode", "peak MiB", "time s"], rows),
        "",
        *[f"- {line}" for line in ratio_lines],
        "",
        *key_lines,
    ]
    data = {
        "batch": args.batch, "side": args.side, "classes": args.classes, "dim": args.dim,
        "embed_dim": args.embed_dim, "att_dim": args.att_dim, "class_chunk": args.class_chunk,
        "repeats": args.repeats, "device": device, "torch_threads": torch.get_num_threads(),
        "check": {name: {"max_difference": diff, "equal": ok}
                  for name, (diff, ok) in checked.items()},
        "variants": records, "reference_over_mlrkit_peak": ratios,
        "reference_over_mlrkit_time": speedups, "clsl_outputs_equal": equal,
        "clsl_memory_ratio": ratios["fwd+bwd"], "clsl_speedup": speedups["fwd+bwd"],
    }
    write_result(out_dir, "clsl_memory",
                 "CLSL head: peak memory and step time, mlrkit vs the released model", body, data)
    print(f"wrote {out_dir / 'clsl_memory.md'} and .json")
    for line in key_lines:
        print(line)


if __name__ == "__main__":
    main()
