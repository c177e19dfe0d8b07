"""CLSL: collaborative learning of semantic-aware feature learning and label recovery (He et al.,
arXiv:2510.10055; the released code calls it SARLP; ``docs/methods.md`` §3).

From a feature map ``(B, D, h, w)`` (cached features, or an encoder's output end to end):

1. optional projection ``D -> d``: 1x1 conv without bias + BatchNorm2d (as ``ssgrl``'s
   ``image_dim``; the release has none, ``d = D = 2048``);
2. a transformer encoder over the ``P = h w`` tokens: :class:`PositionalEncoderLayer`, post-norm,
   with an optional DETR 2-D sine encoding (:func:`sine_position_encoding`) added to the queries
   and keys only (§3.2.2);
3. SRFL, image-conditioned label vectors (§3.2.3): ``v_c = MLP([e_c ; mean_p x_p])``, the MLP a
   1x1 Conv1d ``E+d -> E+d``, BatchNorm1d, GELU, 1x1 Conv1d ``E+d -> d``;
4. the auxiliary branch (§3.2.4): ``l0_c = max_p conv1x1(x)_{c, p}``;
5. the main branch (§3.2.5): low-rank bilinear attention between tokens and label vectors, softmax
   over the CLASSES at each position (:class:`BilinearLabelAttention`), label-aware tokens
   ``g_p = sum_c a[p, c] v_c``, per-position class logits ``alpha3 = MLP([g_p ; x_p])`` and
   self-weighted pooling ``l1_c = sum_p softmax_p(alpha3[:, c]) alpha3[p, c]``
   (:func:`self_weighted_pool`). ``l1`` is the prediction;
6. JLS, label recovery (§3.3, :func:`recover_targets`): unknown entries get the detached soft
   target ``sigmoid(l1 * max_k l1_k)`` (``recovery="released"``) or ``sigmoid(l1 * |max_k l1_k|)``
   (``"corrected"``, the default), known entries keep their label;
7. the loss: the head's registered ``loss`` on ``l1`` (default ``asl`` with CLSL's options, over
   the known entries) ``+ aux_weight *`` ASL of ``l0`` against the recovered targets.

Memory. The literal attention materialises ``(B, P, C, K)`` several times (product, ``tanh``, the
hidden layer, their gradients: 514 MB each at B = 8, P = 196, C = 80, K = 1024). There is no
non-linearity between the hidden layer ``W_h`` and the read-out ``w_t``, so
``alpha2[p, c] = tanh(W1 x_p * W2 v_c) @ g + b`` with ``g = W_h^T w_t`` and one constant ``b``;
:func:`~mlrkit.methods.layers.chunked_bilinear_scores` computes it class chunk by class chunk with
activation checkpointing, so the peak does not grow with ``C``. ``b`` is the same for every class
and cancels in the softmax over classes: ``W_h.bias`` and ``w_t.bias`` get zero gradient, as in
the release. Two concatenations are followed by a linear map: the label MLP's first layer on
``[e_c ; mean token]`` is applied once per class and once per image (not per pair), and the
classifier's first layer on ``[g_p ; x_p]`` is ``a @ (V W_g^T) + x_p W_x^T``, so ``W_g`` is applied
to the ``C`` label vectors instead of the ``P`` positions and ``g`` is never formed.
``direct=True`` runs the three literal formulas (tests, ``benchmarks/clsl_memory.py``).

Departures from the release (each an option where it can be one):

- ``recovery="corrected"`` by default: the released rule flips the sign of every logit of an image
  whose logits are all negative (``max_k l1_k < 0``), so exactly the images the model believes
  empty get recovered targets above 0.5 everywhere. Scaling by ``|max_k l1_k|`` keeps the released
  sharpening (an image's top logit acts as an inverse temperature: confident images get harder
  targets) but keeps each target on the side of 0.5 that the prediction ``sigmoid(l1)`` is on;
  it equals the released rule whenever ``max_k l1_k >= 0``.
- The main term is averaged over the known entries (``asl``'s ``reduction="mean"``); the release
  sums it and multiplies by 1000, so its size grows with ``B * C * known``, while the auxiliary term
  is a mean (times 1000). With mean reduction here the auxiliary term therefore weighs
  ``B * C * known`` times more relative to the main term than in the release;
  ``loss_options: {reduction: sum}`` gives the released balance (the released loss / 1000).
- The positional encoding is computed for the input's ``h x w`` (the release sizes a buffer from
  ``img_size // 32``); the feed-forward size defaults to ``d`` (the release fixes 2048 = ``d``).
- Label embeddings come from ``TaskSpec.label_embeddings`` (a buffer); the release's BERT vectors
  can be supplied that way, its learnable ``random`` embeddings are not offered.

Ablations (the released model files): ``use_jls=False`` is ``sarlpwoJLS``; ``use_srfl=False`` is
``sarlpwoSRFL`` (raw embeddings, no label MLP); ``use_srfl=False, use_jls=False,
project_embeddings=True`` is ``sarlpwoSRFLaJLS`` (the MLP on the embeddings alone,
``E -> E -> d``). Quirk: every released ablation also drops the auxiliary branch (``fc0``) and
its loss, ``sarlpwoSRFL`` included, so by default ``aux_branch`` is on only when both SRFL and JLS
are; ``aux_branch=True`` with ``use_jls=False`` keeps the branch and trains it on the known entries
only, ``aux_branch=True`` with ``use_srfl=False`` keeps recovery without SRFL.

Shapes: ``B`` batch, ``D`` input channels, ``d`` token size, ``P`` positions, ``C`` classes, ``E``
label-embedding size, ``L`` label-vector size (``d``, or ``E`` for raw embeddings), ``K``
attention size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mlrkit.methods.base import Method, register_method, require_label_embeddings
from mlrkit.methods.layers import channel_projection, chunked_bilinear_scores
from mlrkit.methods.losses import asymmetric_loss, create_loss
from mlrkit.methods.losses.partial_label import check_asymmetric_options
from mlrkit.methods.task import MethodOutput, StepInfo, TaskSpec

#: CLSL's ASL settings (train.py defaults ``--gamma-pos 0 --gamma-neg 2 --clip 0``; ``eps=1e-05``
#: and ``disable_torch_grad_focal_loss=True`` in ``lib/util.py`` ``get_loss_fn``).
CLSL_ASL_OPTIONS = {"gamma_neg": 2.0, "gamma_pos": 0.0, "clip": 0.0, "eps": 1e-5}
RECOVERY_RULES = ("released", "corrected")


def sine_position_encoding(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> Tensor:
    """DETR's normalised 2-D sine encoding of an ``height x width`` grid, ``(height * width, dim)``.

    Rows are positions in row-major order (as ``(B, dim, h, w).flatten(2)``). The first ``dim / 2``
    channels encode the row, the last ``dim / 2`` the column: coordinate ``y = i / h * scale``
    (``i = 1..h``) and, for channel pair ``(2j, 2j + 1)`` of a half, ``sin(y / T^(2j / (dim/2)))``
    and ``cos`` of the same angle (``T = temperature``). ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"the sine position encoding needs dim divisible by 4, got {dim}")
    half = dim // 2
    frequencies = temperature ** (2 * (torch.arange(half) // 2) / half)  # (half,)

    def encode(size: int) -> Tensor:  # (size, half)
        coords = torch.arange(1, size + 1, dtype=torch.float32) / (size + 1e-6) * scale
        angles = coords[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=-1).flatten(1)

    rows = encode(height)[:, None, :].expand(height, width, half)
    cols = encode(width)[None, :, :].expand(height, width, half)
    return torch.cat((rows, cols), dim=-1).reshape(height * width, dim)


class PositionalEncoderLayer(nn.Module):
    """A transformer encoder layer whose positional encoding is added to queries and keys only.

    Post-norm (default)::

        x = norm1(x + drop(attn(q = x + pos, k = x + pos, v = x)))
        x = norm2(x + drop(linear2(drop(relu(linear1(x))))))

    or pre-norm with ``normalize_before``. Without ``pos`` it computes what
    ``nn.TransformerEncoderLayer(dim, heads, ffn_dim, dropout, batch_first=True)`` does, with the
    same parameter names (``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``); that layer
    cannot add ``pos`` to the queries and keys alone (DETR, CLSL's ``--pos``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.normalize_before = normalize_before
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _attend(self, x: Tensor, pos: Tensor | None) -> Tensor:
        query = x if pos is None else x + pos
        return self.dropout1(self.self_attn(query, query, x, need_weights=False)[0])

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(torch.relu(self.linear1(x)))))

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        """``x`` ``(B, P, d)``, ``pos`` ``(P, d)`` or ``(B, P, d)`` or ``None`` → ``(B, P, d)``."""
        if self.normalize_before:
            x = x + self._attend(self.norm1(x), pos)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attend(x, pos))
        return self.norm2(x + self._feed_forward(x))


class BilinearLabelAttention(nn.Module):
    """Low-rank bilinear attention of every position over the classes (CLSL's ``attention2``)::

        alpha2[p, c] = w_t^T (W_h tanh(W1 x_p * W2 v_c) + b_h) + b_t     W1, W2 without bias
        a[p, c]      = softmax_c(alpha2[p, :])

    :meth:`scores` computes ``alpha2`` as ``tanh(W1 x_p * W2 v_c) @ (W_h^T w_t) + (w_t . b_h + b_t)``
    in chunks of ``class_chunk`` classes with activation checkpointing; :meth:`scores_direct` is the
    literal formula with ``(B, P, C, K)`` materialised. Parameter names follow the release
    (``linear1``, ``linear2``, ``hidden_linear``, ``target_linear``).
    """

    def __init__(
        self, token_dim: int, label_dim: int, att_dim: int = 1024, class_chunk: int = 4
    ) -> None:
        super().__init__()
        if class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1, got {class_chunk}")
        self.class_chunk = class_chunk
        self.linear1 = nn.Linear(token_dim, att_dim, bias=False)
        self.linear2 = nn.Linear(label_dim, att_dim, bias=False)
        self.hidden_linear = nn.Linear(att_dim, att_dim)
        self.target_linear = nn.Linear(att_dim, 1)

    def scores(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """``alpha2`` ``(B, P, C)`` from ``tokens`` ``(B, P, d)`` and ``labels`` ``(B, C, L)``,
        class chunk by class chunk."""
        gate = (self.target_linear.weight @ self.hidden_linear.weight).squeeze(0)  # (K,)
        offset = self.target_linear(self.hidden_linear.bias)  # (1,): the same for every class
        image, label = self.linear1(tokens), self.linear2(labels)  # (B, P, K), (B, C, K)
        return chunked_bilinear_scores(image, label, gate, self.class_chunk) + offset

    def scores_direct(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Reference for :meth:`scores`: the literal formula, ``(B, P, C, K)`` materialised."""
        joint = torch.tanh(self.linear1(tokens)[:, :, None, :] * self.linear2(labels)[:, None])
        return self.target_linear(self.hidden_linear(joint)).squeeze(-1)  # (B, P, C)

    def forward(self, tokens: Tensor, labels: Tensor, direct: bool = False) -> Tensor:
        """Attention weights ``a`` ``(B, P, C)``: at each position, a softmax over the classes."""
        scores = self.scores_direct if direct else self.scores
        return scores(tokens, labels).softmax(dim=-1)


def self_weighted_pool(scores: Tensor) -> Tensor:
    """``l_c = sum_p softmax_p(scores[:, p, c]) * scores[:, p, c]``: ``(B, P, C)`` → ``(B, C)``.

    Each class pools the positions weighted by the softmax of its own scores over the positions,
    between the mean (flat scores) and the maximum (one dominant position).
    """
    return (scores.softmax(dim=1) * scores).sum(dim=1)


def recover_targets(logits: Tensor, targets: Tensor, rule: str = "corrected") -> Tensor:
    """CLSL's recovered soft targets (``docs/methods.md`` §3.3), detached, ``(B, C)`` float.

    Known entries (``targets >= 0``) keep their label; an unknown entry takes
    ``sigmoid(l_c * m)`` with ``m = max_k l_k`` over the image's logits (``rule="released"``) or
    ``m = |max_k l_k|`` (``"corrected"``, the same unless every logit of the image is negative,
    where the released rule flips their signs).

    Example:
        >>> recover_targets(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1, 0]]), "released")
        tensor([[0.7311, 0.0000]])
    """
    if rule not in RECOVERY_RULES:
        raise ValueError(f"recovery must be one of {RECOVERY_RULES}, got {rule!r}")
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(
            f"logits and targets must both be (B, C); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    with torch.no_grad():
        logits = logits.detach().float()
        top = logits.max(dim=1, keepdim=True).values
        recovered = torch.sigmoid(logits * (top if rule == "released" else top.abs()))
        return torch.where(targets >= 0, targets.float(), recovered)


class CLSLLogits(NamedTuple):
    """What the two branches compute.

    Attributes:
        main: ``(B, C)`` main-branch logits ``l1`` (the prediction).
        aux: ``(B, C)`` auxiliary-branch logits ``l0``, or ``None`` without the branch.
        position_scores: ``(B, P, C)`` per-position class logits ``alpha3``.
        attention: ``(B, P, C)`` label attention ``a`` (softmax over classes).
    """

    main: Tensor
    aux: Tensor | None
    position_scores: Tensor
    attention: Tensor


def _conv_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """1x1 Conv1d ``in -> in``, BatchNorm1d, GELU, 1x1 Conv1d ``in -> out`` (the release's
    ``ttd``), on ``(B, in, C)``."""
    return nn.Sequential(
        nn.Conv1d(in_dim, in_dim, 1), nn.BatchNorm1d(in_dim), nn.GELU(), nn.Conv1d(in_dim, out_dim, 1)
    )


def _checked_label_embeddings(spec: TaskSpec, recovery: str, use_srfl: bool,
                              project_embeddings: bool, position_encoding: bool,
                              dim: int) -> Tensor:
    """The ``(C, E)`` label embeddings of ``spec``, once the options :class:`CLSL` refuses are
    ruled out (each named)."""
    if len(spec.feature_shape) != 3:
        raise ValueError(f"clsl needs spatial (D, h, w) features, got {spec.feature_shape}")
    if recovery not in RECOVERY_RULES:
        raise ValueError(f"recovery must be one of {RECOVERY_RULES}, got {recovery!r}")
    if project_embeddings and use_srfl:
        raise ValueError("project_embeddings applies only with use_srfl=False")
    embeddings = require_label_embeddings(spec, "clsl")
    if position_encoding and dim % 4:
        raise ValueError(f"position_encoding needs a token size divisible by 4, got {dim}")
    return embeddings


def _label_mlp(embed_dim: int, dim: int, use_srfl: bool, project_embeddings: bool) -> nn.Module | None:
    """The label path's MLP: ``[label embedding, mean image token] E + d -> d`` with SRFL, ``E -> d``
    with ``project_embeddings``, else none (the raw embeddings)."""
    if use_srfl:
        return _conv_mlp(embed_dim + dim, dim)
    return _conv_mlp(embed_dim, dim) if project_embeddings else None


def _main_loss(spec: TaskSpec, loss: str, loss_options: dict | None):
    """The registered main loss; for ``asl``, ``loss_options`` over :data:`CLSL_ASL_OPTIONS`."""
    options = dict(loss_options or {})
    if loss == "asl":
        options = {**CLSL_ASL_OPTIONS, **options}
    return create_loss(loss, spec, **options)


@register_method("clsl")
class CLSL(Method):
    """CLSL / SARLP head on ``(B, D, h, w)`` features (``docs/methods.md`` §3; module docstring).

    Args (release defaults from ``models/sarlp.py`` and ``lib/util.py`` ``get_args``):
        spec: the task; needs ``label_embeddings`` ``(C, E)`` (kept fixed, a buffer; release: BERT,
            768-d).
        image_dim: token size ``d``; a 1x1 conv + BatchNorm2d projects ``D -> d`` when it differs
            from ``D``. ``None`` keeps ``d = D`` (release: no projection, ``d = 2048``).
        num_heads: encoder attention heads (release ``--num-heads`` 8).
        ffn_dim: encoder feed-forward size; ``None`` uses ``d`` (release: 2048 = ``d``).
        num_layers: encoder layers (release ``--num-layers`` 1).
        dropout: encoder dropout (release 0.1).
        normalize_before: pre-norm encoder layers (release: post-norm, ``--normalize-before`` off).
        position_encoding: add the 2-D sine encoding to queries and keys (release: ``--pos``, on
            in every README command).
        att_dim: bilinear attention size ``K`` (release 1024).
        mlp_dropout: dropout of the position-wise classifier (release ``nn.Dropout()``, 0.5).
        class_chunk: classes per chunk of the bilinear attention: each chunk's backward pass holds
            a few ``(B, P, class_chunk, K)`` tensors (4: about 25 MB each at the published size,
            and faster than larger chunks on a CPU; ``benchmarks/clsl_memory.py``).
        use_srfl: condition the label vectors on the image's mean token (SRFL). ``False``: the raw
            embeddings (``sarlpwoSRFL``), or ``project_embeddings``.
        project_embeddings: with ``use_srfl=False``, pass the embeddings alone through the label
            MLP ``E -> E -> d`` (``sarlpwoSRFLaJLS``).
        use_jls: train the auxiliary branch on recovered targets (JLS); ``False``: on the known
            entries only (with ``aux_branch=True``; the release drops the branch, ``sarlpwoJLS``).
        aux_branch: build the auxiliary max-pooling branch and its loss; ``None``: only when
            ``use_srfl`` and ``use_jls`` (as the released ablation files).
        recovery: ``"corrected"`` (default) or ``"released"``, see :func:`recover_targets`.
        aux_weight: weight of the auxiliary term (release 0.8).
        aux_loss_options: :func:`~mlrkit.methods.losses.asymmetric_loss` options of the auxiliary
            term, over :data:`CLSL_ASL_OPTIONS`; ``reduction`` defaults to ``"mean"`` (release:
            mean over ``B * C``, times 1000).
        loss: the registered main loss on ``l1`` (release: ASL over the known entries).
        loss_options: its options; for ``asl`` they override :data:`CLSL_ASL_OPTIONS` (release:
            ``reduction="sum"`` times 1000, here ``"mean"``).
    """

    input_kind = "spatial"

    def __init__(
        self,
        spec: TaskSpec,
        image_dim: int | None = None,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.1,
        normalize_before: bool = False,
        position_encoding: bool = True,
        att_dim: int = 1024,
        mlp_dropout: float = 0.5,
        class_chunk: int = 4,
        use_srfl: bool = True,
        project_embeddings: bool = False,
        use_jls: bool = True,
        aux_branch: bool | None = None,
        recovery: str = "corrected",
        aux_weight: float = 0.8,
        aux_loss_options: dict | None = None,
        loss: str = "asl",
        loss_options: dict | None = None,
    ) -> None:
        super().__init__(spec)
        in_dim = spec.feature_dim
        dim = in_dim if image_dim is None else image_dim
        embeddings = _checked_label_embeddings(spec, recovery, use_srfl, project_embeddings,
                                               position_encoding, dim)
        self.register_buffer("label_embeddings", embeddings)
        num_classes, embed_dim = embeddings.shape
        self.dim = dim
        self.use_srfl, self.use_jls, self.recovery = use_srfl, use_jls, recovery
        self.position_encoding = position_encoding
        self.aux_weight = aux_weight

        self.projection = channel_projection(in_dim, dim)
        self.encoder = nn.ModuleList(
            PositionalEncoderLayer(dim, num_heads, dim if ffn_dim is None else ffn_dim, dropout,
                                   normalize_before)
            for _ in range(num_layers)
        )
        self.label_mlp = _label_mlp(embed_dim, dim, use_srfl, project_embeddings)
        label_dim = embed_dim if self.label_mlp is None else dim
        self.attention = BilinearLabelAttention(dim, label_dim, att_dim, class_chunk)
        self.classifier = nn.Sequential(
            nn.Linear(dim + label_dim, dim + label_dim),
            nn.GELU(),
            nn.Dropout(mlp_dropout),
            nn.Linear(dim + label_dim, num_classes),
        )
        if aux_branch is None:
            aux_branch = use_srfl and use_jls
        self.aux_head = nn.Conv1d(dim, num_classes, 1) if aux_branch else None
        self.aux_loss_options = {**CLSL_ASL_OPTIONS, "reduction": "mean",
                                 **(aux_loss_options or {})}
        check_asymmetric_options(**{k: self.aux_loss_options[k] for k in
                                    ("gamma_neg", "gamma_pos", "clip", "eps", "reduction")})
        self.loss = _main_loss(spec, loss, loss_options)

    # ---------------------------------------------------------------- stages

    def encode(self, inputs: Tensor) -> Tensor:
        """Tokens ``(B, P, d)``: projection, then the encoder layers (with the sine encoding)."""
        maps = self.projection(inputs)
        height, width = maps.shape[-2:]
        tokens = maps.flatten(2).transpose(1, 2)
        pos = None
        if self.position_encoding:
            pos = sine_position_encoding(height, width, self.dim).to(tokens)
        for layer in self.encoder:
            tokens = layer(tokens, pos)
        return tokens

    def label_vectors(self, tokens: Tensor, direct: bool = False) -> Tensor:
        """Label vectors ``v`` ``(B, C, L)``: with SRFL ``MLP([e_c ; mean_p x_p])``.

        The MLP's first 1x1 conv is linear in the concatenation, ``W [e_c ; m] + b = W_e e_c +
        (W_m m + b)``: it is computed once per class and once per image, not per (image, class)
        pair, unless ``direct``.
        """
        batch = tokens.shape[0]
        embeddings = self.label_embeddings
        if not self.use_srfl:
            vectors = embeddings.expand(batch, -1, -1)  # (B, C, E)
            if self.label_mlp is None:
                return vectors
            return self.label_mlp(vectors.transpose(1, 2)).transpose(1, 2)
        image = tokens.mean(dim=1)  # (B, d)
        first, *rest = self.label_mlp
        if direct:
            pairs = torch.cat((embeddings.expand(batch, -1, -1),
                               image[:, None].expand(-1, embeddings.shape[0], -1)), dim=-1)
            hidden = first(pairs.transpose(1, 2))  # (B, E + d, C)
        else:
            weight = first.weight.squeeze(-1)  # (E + d, E + d)
            split = embeddings.shape[1]
            per_class = embeddings @ weight[:, :split].T  # (C, E + d)
            per_image = torch.addmm(first.bias, image, weight[:, split:].T)  # (B, E + d)
            hidden = (per_class[None] + per_image[:, None]).transpose(1, 2)
        for layer in rest:
            hidden = layer(hidden)
        return hidden.transpose(1, 2)

    def position_scores(self, tokens: Tensor, vectors: Tensor, attention: Tensor,
                        direct: bool = False) -> Tensor:
        """Per-position class logits ``alpha3 = MLP([g_p ; x_p])`` ``(B, P, C)``, with the
        label-aware tokens ``g_p = sum_c a[p, c] v_c``.

        The MLP's first linear map is linear in ``g_p``: ``W_g g_p = sum_c a[p, c] (W_g v_c)``, so
        ``W_g`` is applied to the ``C`` label vectors rather than to the ``P`` positions and
        ``g`` and the concatenation are never formed (unless ``direct``).
        """
        first, *rest = self.classifier
        if direct:
            return self.classifier(torch.cat((attention @ vectors, tokens), dim=-1))
        split = vectors.shape[-1]
        per_class = vectors @ first.weight[:, :split].T  # (B, C, d + L)
        hidden = torch.baddbmm(torch.addmm(first.bias, tokens.flatten(0, 1),
                                           first.weight[:, split:].T).view(*tokens.shape[:2], -1),
                               attention, per_class)  # (B, P, d + L)
        for layer in rest:
            hidden = layer(hidden)
        return hidden

    def branches(self, inputs: Tensor, direct: bool = False) -> CLSLLogits:
        """Both branches on ``inputs`` ``(B, D, h, w)``; ``direct`` selects the literal forms:
        the fully materialised bilinear attention, the label MLP on ``[e_c ; m]`` and the
        classifier on ``[g_p ; x_p]``, without recomputation."""
        tokens = self.encode(inputs)
        vectors = self.label_vectors(tokens, direct)
        aux = None
        if self.aux_head is not None:
            aux = self.aux_head(tokens.transpose(1, 2)).amax(dim=-1)  # (B, C)
        attention = self.attention(tokens, vectors, direct)  # (B, P, C)
        scores = self.position_scores(tokens, vectors, attention, direct)  # (B, P, C)
        return CLSLLogits(self_weighted_pool(scores), aux, scores, attention)

    def loss_parts(
        self,
        out: CLSLLogits,
        targets: Tensor,
        index: Tensor | None = None,
        step: StepInfo | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """The training loss ``main + aux_weight * aux`` and its logs (``main``, ``aux``)."""
        main = self.loss(out.main, targets, index, step)
        if out.aux is None:
            return main.loss, {**main.logs, "main": float(main.loss.detach())}
        aux_targets = recover_targets(out.main, targets, self.recovery) if self.use_jls else targets
        aux = asymmetric_loss(out.aux, aux_targets, **self.aux_loss_options)
        parts = torch.stack([main.loss.detach().float(), aux.detach().float()]).tolist()
        return main.loss + self.aux_weight * aux, {**main.logs, "main": parts[0], "aux": parts[1]}

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None, direct: bool = False) -> MethodOutput:
        """``inputs`` ``(B, D, h, w)`` → main-branch logits ``(B, C)``; with ``targets`` ``(B, C)``
        int8 the loss and its parts in ``logs``."""
        out = self.branches(inputs, direct)
        if targets is None:
            return MethodOutput(out.main)
        loss, logs = self.loss_parts(out, targets, index, step)
        return MethodOutput(out.main, loss, logs)
