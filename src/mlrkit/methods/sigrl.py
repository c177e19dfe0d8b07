"""SigRL for open vocabulary (ICME 2025, MVL-Lab/SigRL ``OV/``; ``docs/methods.md`` §4): a label
graph (GMC), text-guided semantic decoupling, semantic visual feature reconstruction (SVFR), and
local + global image-text matching, scoring any label embeddings given at forward time.

From image features and label embeddings ``T`` ``(C, E)``:

1. student tokens ``Z`` ``(B, P, E)`` and ``z_g`` ``(B, E)``, by ``student``:

   - ``"clip"`` (as released): the CLIP token layout ``(B, R, E)`` of an encoder ``clip:ARCH``
     (:mod:`mlrkit.encoders.clip`): ``z_g`` its row 0 (the class token through CLIP's
     ``W_proj``), ``Z`` its ``P`` projected patch tokens; nothing is learned here, CLIP's own
     ``W_proj`` (and the blocks a recipe makes trainable) is trained through the encoder. The
     label embeddings must be CLIP text embeddings of the same width ``E``;
   - ``"projection"`` (default): a feature map ``(B, D, h, w)`` of any timm encoder,
     ``Z = W x_p`` and ``z_g = W mean_p x_p``, one learned projection ``W`` into the label space
     shared by both (as CLIP's ``W_proj`` is);
   - ``"conse"``: the ``tf_efficientnet_lite0`` ImageNet feature map ``(B, 1280, h, w)``,
     ``Z = f(x_p)`` and ``z_g = f(mean_p x_p)`` with ``f`` ConSE's embedding
     (:class:`~mlrkit.encoders.imagenet.ConseEmbedding`) through a *trainable* copy of the
     ImageNet classifier, initialised from the pretrained head (``conse_lr_mult`` scales its
     learning rate): the student starts as ConSE, in the label space, on unseen classes too, as
     the released student starts as CLIP; ``z_g`` is then dense ConSE's global embedding and
     ``Z`` its local tokens (:func:`mlrkit.zero_shot.dense_conse_scores`);

2. GMC: two GATv2 layers over the fully connected graph of the ``C`` label nodes
   (:class:`GATv2`): 4 heads x 32 concatenated, ELU, then one head back to ``E``; shared weights,
   LeakyReLU 0.2, dropout 0.3 on the inputs, between the layers and on the attention;
3. semantic decoupling: ``S_{c,d} = sum_p softmax_p(fc3(tanh(z_p * t_c)))_{p,d} z_{p,d}``
   (a softmax over positions for each channel, :func:`decouple`);
4. text mixing: ``M = relu(S^T T) / (|S|_F |T|_F)`` ``(E, E)``, rows L2-normalised,
   ``S' = S M``; then ``H = [S' ; G]`` ``(C, 2E)``;
5. SVFR: ``k_c = fc1(h_c)`` (no bias) and ``r_{p,d} = z_{p,d} w_{p,d}`` with ``w_{p,d} = sum_c
   softmax_p(fc3'(tanh(z_p * k_c)))_{p,d}`` (:func:`reconstruction_weights`; ``svfr_gate="one"``,
   released); with ``svfr_gate="zero"``, ``r_{p,d} = z_{p,d} (1 + g_d (w_{p,d} P / C - 1))``, a
   learned per-channel gate ``g`` that starts at 0 (``R = Z``) and equals the released form, to a
   constant factor the scores ignore, at ``g = 1``;
6. scores: ``s_loc_c`` the mean of the top-16 of ``(R T^T)_{p,c}`` over positions, ``s_glob = z_g
   T^T``, each L2-normalised over the classes, ``s = (s_loc + s_glob) / 2`` (``score_norm=
   "classes"``, released); with ``score_norm="cosine"`` every token, ``z_g`` and label embedding
   is L2-normalised first and the two cosine scores are averaged as they are (ConSE's and
   CLIP's matching: an image's score for a class does not depend on which other classes are
   scored with it);
7. losses: the ranking loss (``rank``, ``docs/methods.md`` §4.2) on ``s`` over the known entries,
   plus ``distill_weight *`` the L1 distance of ``z_g`` to a frozen teacher's embedding. With
   ``student="clip"`` the teacher is, as released, the frozen initial CLIP image tower's
   embedding of the same (augmented) image: row 1 of the layout, which the encoder gives when
   built with ``teacher`` (recipe ``encoder.teacher: true``). With ``"projection"`` it is ConSE's
   embedding of the image (:class:`ConseEmbedding`, pooled ``tf_efficientnet_lite0`` features),
   which lies in the same label space; with ``"conse"`` the frozen initial copy of the student
   (the same ``T`` and temperature), exactly as the release distils to the frozen CLIP tower.

Memory. Steps 3 and 5 materialise ``(B, C, P, E)`` in the release (32 x 1006 x 196 x 512 floats,
13 GB, for NUS-WIDE GZSL). Here both run class chunk by class chunk (``class_chunk``) with
activation checkpointing under autograd: ``S`` is computed per chunk and the SVFR weights are
summed over chunks, so the peak does not grow with ``C``; ``direct=True`` runs the literal form
(tests, ``benchmarks/sigrl_memory.py``).

Departures from the release (options where they can be):

- ``mixing_norm="image"`` (default) takes ``|S|_F`` of each image's ``S``; the release takes the
  Frobenius norm of the whole batch tensor (``"batch"``), which would tie an image's scores to
  its batch, were it not for the row normalisation of ``M`` that follows and cancels any positive
  scale: both give the same ``S'`` (``tests/test_sigrl.py``); the option documents the quirk.
- ``student="projection"`` puts any timm encoder's spatial features in the place of CLIP's tokens,
  with a learned projection and the ConSE teacher.
- ``score_norm="cosine"`` and ``svfr_gate="zero"`` (the ``student="conse"`` recipes) make the
  untrained head score exactly as dense ConSE (:func:`mlrkit.zero_shot.dense_conse_scores`,
  ``local_weight`` 0.5, a test). Released matching L2-normalises each image's scores over the
  classes scored together: over VOC 2007's 5 unseen classes that alone took the untrained
  student from dense ConSE's 58.3 ZSL mAP to 53.8, and training (which then moved the random SVFR
  away from identity) to 40.4 (``docs/methods.md`` §4).

Ablations: ``use_gmc=False`` (``H = S'``, ``fc1`` ``E -> E``), ``use_svfr=False`` (``R = Z``:
neither decoupling, mixing nor GMC is used), ``distill_weight=0``, ``branches="global"`` or
``"local"`` (one score instead of the average).

Shapes: ``B`` batch, ``D`` input channels, ``P`` positions, ``R`` rows of a CLIP token layout
(``1 + P``, or ``2 + P`` with the teacher's row), ``C`` classes, ``E`` label-embedding size, ``c``
classes per chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mlrkit.methods.base import OpenVocabularyMethod, moved_param_groups, register_method
from mlrkit.methods.losses import create_loss
from mlrkit.methods.open_vocabulary import conse_embedding
from mlrkit.methods.task import TaskSpec

BRANCHES = ("both", "global", "local")
MIXING_NORMS = ("image", "batch")
SCORE_NORMS = ("classes", "cosine")
SVFR_GATES = ("one", "zero")
STUDENTS = ("projection", "clip", "conse")
NO_TEACHER_ROW = (
    "sigrl with student 'clip' and distill_weight > 0 distils z_g to the frozen CLIP tower's "
    "embedding, but the encoder's tokens have no teacher row: set encoder.teacher: true (an "
    "end-to-end encoder section), or method.distill_weight: 0"
)


class GATv2Layer(nn.Module):
    """One GATv2 layer (Brody et al. 2022) over a fully connected graph, as labml's
    ``GraphAttentionV2Layer`` that SigRL uses.

    For node features ``h`` ``(C, F_in)`` and each head: ``g = W h`` (``W`` without bias; with
    ``share_weights`` the same for the source and target roles), ``e_ij = a^T LeakyReLU(g_i +
    g_j)``, ``alpha_ij = softmax_j(e_ij)`` (dropout on ``alpha``), ``h'_i = sum_j alpha_ij g_j``.
    Heads are concatenated (``concat``, each ``out / heads`` wide) or averaged.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int, concat: bool, dropout: float = 0.3,
                 negative_slope: float = 0.2, share_weights: bool = True) -> None:
        super().__init__()
        if concat and out_dim % heads:
            raise ValueError(f"out_dim {out_dim} is not divisible by {heads} heads")
        self.heads, self.concat = heads, concat
        self.hidden = out_dim // heads if concat else out_dim
        self.source = nn.Linear(in_dim, self.hidden * heads, bias=False)
        self.target = self.source if share_weights else nn.Linear(in_dim, self.hidden * heads,
                                                                  bias=False)
        self.attention = nn.Linear(self.hidden, 1, bias=False)
        self.negative_slope = negative_slope
        self.dropout = nn.Dropout(dropout)

    def forward(self, nodes: Tensor, node_chunk: int = 64) -> Tensor:
        """``(C, F_in)`` → ``(C, out)``, ``node_chunk`` target nodes at a time: the pairs
        ``(i, j)`` of one chunk, ``(chunk, C, heads, hidden)``, are alive at once (recomputed in
        the backward pass under autograd), not all ``C x C``."""
        count = nodes.shape[0]
        g_source = self.source(nodes).view(count, self.heads, self.hidden)
        g_target = self.target(nodes).view(count, self.heads, self.hidden)
        recompute = torch.is_grad_enabled() and g_source.requires_grad
        rows = [checkpoint(self._attend, g_source, chunk, use_reentrant=False) if recompute
                else self._attend(g_source, chunk) for chunk in g_target.split(node_chunk)]
        out = torch.cat(rows)
        return out.reshape(count, -1) if self.concat else out.mean(dim=1)

    def _attend(self, g_source: Tensor, g_target: Tensor) -> Tensor:
        """Attention of target nodes ``(i, heads, hidden)`` over every source node → ``(i, heads,
        hidden)``."""
        pairs = g_source[None, :, :, :] + g_target[:, None, :, :]  # (i, j, heads, hidden)
        scores = self.attention(F.leaky_relu(pairs, self.negative_slope)).squeeze(-1)  # (i, j, h)
        weights = self.dropout(scores.softmax(dim=1))
        return torch.einsum("ijh,jhf->ihf", weights, g_source)


class GATv2(nn.Module):
    """labml's two-layer GATv2 model as SigRL configures it: dropout, layer 1 (``heads`` x
    ``hidden / heads`` concatenated), ELU, dropout, layer 2 (one head to ``out``)."""

    def __init__(self, dim: int, hidden: int = 128, heads: int = 4, dropout: float = 0.3) -> None:
        super().__init__()
        self.layer1 = GATv2Layer(dim, hidden, heads, concat=True, dropout=dropout)
        self.layer2 = GATv2Layer(hidden, dim, 1, concat=False, dropout=dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, nodes: Tensor) -> Tensor:
        """Label embeddings ``(C, E)`` → graph features ``G`` ``(C, E)``."""
        hidden = F.elu(self.layer1(self.dropout(nodes)))
        return self.layer2(self.dropout(hidden))


def _decouple_chunk(tokens: Tensor, queries: Tensor, fc: nn.Linear) -> Tensor:
    """``S`` of one class chunk: ``tokens`` ``(B, P, E)``, ``queries`` ``(c, E)`` or
    ``(B, c, E)`` → ``(B, c, E)``."""
    queries = queries[None] if queries.ndim == 2 else queries
    weights = fc(torch.tanh(tokens[:, None] * queries[:, :, None])).softmax(dim=2)  # (B,c,P,E)
    return (weights * tokens[:, None]).sum(dim=2)


def _reconstruction_chunk(tokens: Tensor, keys: Tensor, fc: nn.Linear) -> Tensor:
    """SVFR weights of one class chunk, summed over its classes: ``(B, P, E)``."""
    return fc(torch.tanh(tokens[:, None] * keys[:, :, None])).softmax(dim=2).sum(dim=1)


def _chunks(function, tokens: Tensor, per_class: Tensor, fc: nn.Linear, class_chunk: int,
            direct: bool) -> Iterator[Tensor]:
    """``function`` over class chunks of ``per_class`` (``(C, E)`` or ``(B, C, E)``), each
    recomputed in the backward pass under autograd; all ``C`` at once, without recomputation,
    when ``direct`` or when ``C <= class_chunk``."""
    if class_chunk < 1:
        raise ValueError(f"class_chunk must be >= 1, got {class_chunk}")
    chunks = per_class.split(class_chunk, dim=-2)
    if direct or len(chunks) == 1:  # one chunk: recomputing it would save nothing at the peak
        yield function(tokens, per_class, fc)
        return
    recompute = torch.is_grad_enabled() and (tokens.requires_grad or per_class.requires_grad)
    for chunk in chunks:  # one at a time: the caller consumes each result before the next
        yield (checkpoint(function, tokens, chunk, fc, use_reentrant=False) if recompute
               else function(tokens, chunk, fc))


def decouple(tokens: Tensor, queries: Tensor, fc: nn.Linear, class_chunk: int = 4,
             direct: bool = False) -> Tensor:
    """Text-guided semantic decoupling ``S`` ``(B, C, E)``:
    ``S_{c,d} = sum_p softmax_p(fc(tanh(z_p * q_c)))_{p,d} z_{p,d}``.

    Args:
        tokens: ``Z`` ``(B, P, E)``.
        queries: the label embeddings ``(C, E)`` (or ``(B, C, E)``).
        fc: ``fc3``, ``E -> E``.
        class_chunk: classes per chunk; ``direct`` materialises ``(B, C, P, E)`` at once.
    """
    return torch.cat(list(_chunks(_decouple_chunk, tokens, queries, fc, class_chunk, direct)),
                     dim=1)


def reconstruction_weights(tokens: Tensor, keys: Tensor, fc: nn.Linear, class_chunk: int = 4,
                           direct: bool = False) -> Tensor:
    """SVFR's ``sum_c softmax_p(fc(tanh(z_p * k_c)))`` ``(B, P, E)`` for ``tokens`` ``(B, P, E)``
    and per-image keys ``(B, C, E)``; the reconstructed tokens are ``tokens *`` this."""
    total = None
    for part in _chunks(_reconstruction_chunk, tokens, keys, fc, class_chunk, direct):
        # a running sum: one (B, P, E) total, not one per chunk (in place without autograd)
        total = part if total is None else (
            total.add_(part) if not torch.is_grad_enabled() else total + part)
    return total


def text_mixing(decoupled: Tensor, text: Tensor, norm: str = "image") -> Tensor:
    """``S' = S M`` with ``M = relu(S^T T) / (|S|_F |T|_F)``, rows of ``M`` L2-normalised.

    ``decoupled`` ``S`` ``(B, C, E)``, ``text`` ``T`` ``(C, E)``; ``norm="image"`` takes ``|S|_F``
    per image, ``"batch"`` over the whole ``(B, C, E)`` tensor as released.
    """
    if norm not in MIXING_NORMS:
        raise ValueError(f"mixing_norm must be one of {MIXING_NORMS}, got {norm!r}")
    mixing = torch.relu(torch.einsum("bcd,ce->bde", decoupled, text))  # (B, E, E)
    s_norm = (decoupled.flatten(1).norm(dim=1)[:, None, None] if norm == "image"
              else decoupled.norm())
    mixing = F.normalize(mixing / (s_norm * text.norm()), dim=-1)
    return decoupled @ mixing


def _match(embeddings: Tensor, text: Tensor, cosine: bool) -> Tensor:
    """``embeddings`` ``(..., E)`` against label embeddings ``text`` ``(C, E)`` → ``(..., C)``:
    cosine similarities, or dot products as released."""
    if cosine:
        return F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).T
    return embeddings @ text.T


@register_method("sigrl")
class SigRL(OpenVocabularyMethod):
    """SigRL's open-vocabulary head on CLIP tokens ``(B, R, E)`` or ``(B, D, h, w)`` features
    (module docstring).

    Args (release values from ``OV/train_nus.py`` and ``OV/models``):
        spec: the task; ``label_embeddings`` ``(C, E)`` of the training classes (the student's
            label space).
        student: ``"clip"`` (released: the CLIP token layout, ``spec.feature_shape`` ``(R, E)``),
            ``"projection"`` (``(D, h, w)`` features through a learned projection) or
            ``"conse"`` (ImageNet ``tf_efficientnet_lite0`` maps through a trainable ConSE).
        gat_hidden, gat_heads, gat_dropout: GMC (128 = 4 x 32, 4 heads, 0.3).
        top_k: positions averaged by the local score (16).
        use_gmc, use_svfr: the two modules (ablations).
        branches: ``"both"`` (released), ``"global"`` or ``"local"``.
        mixing_norm: ``"image"`` (default) or ``"batch"`` (released), see :func:`text_mixing`.
        score_norm: ``"classes"`` (released: dot products L2-normalised over the classes) or
            ``"cosine"`` (module docstring, step 6).
        svfr_gate: ``"one"`` (released) or ``"zero"`` (a learned per-channel gate from 0,
            step 5).
        distill_weight: weight of the L1 distillation of ``z_g`` (release 1; 0 disables it).
            With ``student="clip"`` it needs the layout's teacher row.
        distill_top_t, distill_source, distill_templates: the ConSE teacher of
            ``student="projection"`` (pooled ``tf_efficientnet_lite0`` features; the same label
            space as ``label_embeddings``); source and templates also embed the ImageNet names
            of ``student="conse"``.
        conse_top_t, conse_temperature, conse_lr_mult: ``student="conse"``'s ConSE ``T``, the
            temperature of its softmax, and the learning-rate factor of its classifier (its
            teacher uses the same ``T`` and temperature).
        class_chunk: classes per chunk of the decoupling and SVFR.
        loss, loss_options: the registered loss on ``s`` (release: ``rank``).
    """

    input_kind = "spatial"
    no_teacher_input = NO_TEACHER_ROW

    def __init__(
        self,
        spec: TaskSpec,
        student: str = "projection",
        gat_hidden: int = 128,
        gat_heads: int = 4,
        gat_dropout: float = 0.3,
        top_k: int = 16,
        use_gmc: bool = True,
        use_svfr: bool = True,
        branches: str = "both",
        mixing_norm: str = "image",
        score_norm: str = "classes",
        svfr_gate: str = "one",
        distill_weight: float = 1.0,
        distill_top_t: int = 10,
        distill_source: str = "minilm",
        distill_templates: list[str] | None = None,
        conse_top_t: int = 10,
        conse_temperature: float = 1.0,
        conse_lr_mult: float = 1.0,
        class_chunk: int = 4,
        loss: str = "rank",
        loss_options: dict | None = None,
    ) -> None:
        super().__init__(spec)
        if (student not in STUDENTS or branches not in BRANCHES or mixing_norm not in MIXING_NORMS
                or score_norm not in SCORE_NORMS or svfr_gate not in SVFR_GATES):
            raise ValueError(f"student must be one of {STUDENTS}, branches one of {BRANCHES}, "
                             f"mixing_norm one of {MIXING_NORMS} and score_norm one of "
                             f"{SCORE_NORMS}, svfr_gate one of {SVFR_GATES}; got {student!r}, "
                             f"{branches!r}, {mixing_norm!r}, {score_norm!r}, {svfr_gate!r}")
        if top_k < 1 or class_chunk < 1 or distill_weight < 0 or conse_lr_mult <= 0:
            raise ValueError("top_k and class_chunk must be >= 1, distill_weight >= 0 and "
                             "conse_lr_mult > 0")
        dim = self.embedding_dim
        self.student_type = student
        self.top_k, self.branches, self.mixing_norm = top_k, branches, mixing_norm
        self.score_norm = score_norm
        self.use_gmc, self.use_svfr, self.class_chunk = use_gmc, use_svfr, class_chunk
        self.conse_lr_mult = conse_lr_mult
        conse = {"top_t": conse_top_t, "source": distill_source, "templates": distill_templates,
                 "temperature": conse_temperature}
        if student == "clip":
            self._check_clip_tokens(spec.feature_shape, distill_weight)
        elif len(spec.feature_shape) != 3:
            raise ValueError(f"sigrl with student {student!r} needs spatial (D, h, w) "
                             f"features, got {spec.feature_shape}; for the tokens of a "
                             f"clip:ARCH encoder set method.student: clip")
        elif student == "projection":
            self.projection = nn.Linear(spec.feature_dim, dim)
        else:  # a trainable copy of the ImageNet head: ConSE at every position and pooled
            self.conse = conse_embedding(spec.feature_dim, dim, **conse, trainable=True)
        self.gmc = GATv2(dim, gat_hidden, gat_heads, gat_dropout) if use_gmc and use_svfr else None
        if use_svfr:
            self.decouple_fc = nn.Linear(dim, dim)
            self.key = nn.Linear(2 * dim if self.gmc is not None else dim, dim, bias=False)
            self.reconstruct_fc = nn.Linear(dim, dim)
            # per-channel share of the reconstruction: fixed at 1 as released, or learned from 0
            self.svfr_gate = (nn.Parameter(torch.zeros(dim)) if svfr_gate == "zero"
                              else None)
        self.distill_weight = distill_weight
        self.teacher = None
        if distill_weight > 0 and student == "clip":
            # the frozen tower's embedding arrives as the teacher row, taken as it is
            self.teacher = nn.Identity()
        elif distill_weight > 0 and student == "conse":  # the frozen initial copy of the student
            self.teacher = conse_embedding(spec.feature_dim, dim, **conse)
        elif distill_weight > 0:
            self.teacher = conse_embedding(spec.feature_dim, dim, distill_top_t, distill_source,
                                           distill_templates)
        self.loss = create_loss(loss, spec, **(loss_options or {}))

    def _check_clip_tokens(self, shape: tuple[int, ...], distill_weight: float) -> None:
        """Refuse a ``feature_shape`` that is not a CLIP token layout ``(R, E)`` of the label
        embeddings' width, or that lacks the teacher row the distillation needs."""
        from mlrkit.encoders.clip import clip_token_layout

        if len(shape) != 2:
            raise ValueError(f"sigrl with student 'clip' needs the CLIP tokens (R, E) of an "
                             f"encoder clip:ARCH, got features of shape {shape}; for timm "
                             f"features set method.student: projection")
        if shape[1] != self.embedding_dim:
            raise ValueError(f"sigrl with student 'clip' matches CLIP's {shape[1]}-d image tokens "
                             f"with the label embeddings, which are {self.embedding_dim}-d; embed "
                             f"the classes with the encoder's CLIP (label_embeddings: {{source: "
                             f"clip, clip_model: ARCH, weights: FILE}})")
        has_teacher, _ = clip_token_layout(shape[0])
        if distill_weight > 0 and not has_teacher:
            raise ValueError(NO_TEACHER_ROW)

    def student(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Local tokens ``Z`` ``(B, P, E)``, global ``z_g`` ``(B, E)`` and the teacher's input:
        for ``"clip"`` the teacher row ``(B, E)`` of tokens ``(B, R, E)`` (``None`` without one),
        for ``"projection"`` the pooled input features ``(B, D)`` of ``(B, D, h, w)`` features."""
        if self.student_type == "clip":
            from mlrkit.encoders.clip import split_clip_tokens

            tokens = split_clip_tokens(inputs.float())
            return tokens.patches, tokens.embedding, tokens.teacher
        maps = inputs.float().flatten(2).transpose(1, 2)  # (B, P, D)
        pooled = maps.mean(dim=1)
        embed = self.conse if self.student_type == "conse" else self.projection
        return embed(maps), embed(pooled), pooled

    def param_groups(self) -> list[dict]:
        """:meth:`Method.param_groups`, the ConSE student's classifier at ``conse_lr_mult``."""
        if self.student_type != "conse":
            return super().param_groups()
        return moved_param_groups(super().param_groups(), self.conse.parameters(),
                                  self.conse_lr_mult)

    def reconstruct(self, tokens: Tensor, text: Tensor, direct: bool = False) -> Tensor:
        """SVFR's reconstructed tokens ``R`` ``(B, P, E)`` (``Z`` itself without SVFR)."""
        if not self.use_svfr:
            return tokens
        decoupled = decouple(tokens, text, self.decouple_fc, self.class_chunk, direct)
        mixed = text_mixing(decoupled, text, self.mixing_norm)  # (B, C, E)
        if self.gmc is None:
            keys = self.key(mixed)
        elif direct:
            graph = self.gmc(text).expand(tokens.shape[0], -1, -1)
            keys = self.key(torch.cat((mixed, graph), dim=-1))  # (B, C, 2E) -> (B, C, E)
        else:  # fc1 [S' ; G] = W_s S' + W_g G: G's part once for the batch, no (B, C, 2E)
            weight_s, weight_g = self.key.weight.split(mixed.shape[-1], dim=1)
            keys = mixed @ weight_s.T + self.gmc(text) @ weight_g.T
        weights = reconstruction_weights(tokens, keys, self.reconstruct_fc, self.class_chunk,
                                         direct)
        if self.svfr_gate is None:
            return tokens * weights
        # the weights sum to C over the P positions: C / P on average, 1 once rescaled
        relative = weights * (tokens.shape[1] / keys.shape[1]) - 1.0
        return tokens * (1.0 + self.svfr_gate * relative)

    def scores_from(self, tokens: Tensor, image: Tensor, text: Tensor,
                    direct: bool = False) -> Tensor:
        """``s`` ``(B, C)`` from the student's tokens and global embedding."""
        cosine = self.score_norm == "cosine"

        def over_classes(scores: Tensor) -> Tensor:  # released: L2 over the classes scored
            return scores if cosine else F.normalize(scores, dim=-1)

        parts = []
        if self.branches in ("both", "global"):
            parts.append(over_classes(_match(image, text, cosine)))
        if self.branches in ("both", "local"):
            similarity = _match(self.reconstruct(tokens, text, direct), text, cosine)  # (B,P,C)
            top = similarity.topk(min(self.top_k, similarity.shape[1]), dim=1).values
            parts.append(over_classes(top.mean(dim=1)))
        return torch.stack(parts).mean(dim=0)

    def score(self, inputs: Tensor, embeddings: Tensor, direct: bool = False) -> Tensor:
        return self.score_parts(inputs, embeddings, direct)[0]

    def score_parts(self, inputs: Tensor, embeddings: Tensor,
                    direct: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """``s`` ``(B, C)``, ``z_g`` and the teacher's input (:meth:`student`); ``direct`` runs
        the literal decoupling and SVFR. The forward pass (``rank`` and ``distill`` in the logs)
        is :meth:`OpenVocabularyMethod.forward`'s."""
        tokens, image, teacher_input = self.student(inputs)
        return self.scores_from(tokens, image, embeddings, direct), image, teacher_input
