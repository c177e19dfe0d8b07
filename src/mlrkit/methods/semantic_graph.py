"""SSGRL-style semantic graph head on spatial features: the backbone head shared by SARB, SST, HST.

Pipeline (``docs/methods.md`` §1.2-1.5), from a feature map ``(B, D, h, w)``:

1. optional projection ``D -> d``: 1x1 conv without bias + BatchNorm2d (the reference's
   ``changeChannel``), used when ``image_dim`` differs from ``D``;
2. semantic decoupling with the fixed label embeddings → class features ``F`` ``(B, C, d)``;
3. gated graph network over the classes on the co-occurrence graph of the observed training
   positives, ``T`` steps → ``H`` ``(B, C, d)``;
4. ``o_c = tanh(Linear(2d, d_out)([h_c ; f_c]))`` and the per-class score ``<w_c, o_c> + b_c``.

With ``residual=True`` (not in the reference) the score is a linear head on the pooled input map
plus the graph's score, ``s_c = <v_c, mean_p x_p> + a_c + <w_c, o_c> + b_c``, with ``w`` and ``b``
starting at zero: the head starts as the linear head it contains and the decoupling and the graph
add what they can to it (``docs/methods.md`` §1, "Residual form").

:meth:`SemanticGraphHead.decouple`, :meth:`~SemanticGraphHead.propagate` and
:meth:`~SemanticGraphHead.classify` are the three stages as separate calls, so methods that edit
class features between them (SARB's blending) reuse this head.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlrkit.methods.base import (
    Method,
    moved_param_groups,
    register_method,
    require_label_embeddings,
)
from mlrkit.methods.layers import (
    ElementWiseClassifier,
    GatedGNN,
    SemanticDecoupling,
    channel_projection,
    cooccurrence_adjacency,
)
from mlrkit.methods.losses import create_loss
from mlrkit.methods.task import MethodOutput, StepInfo, TaskSpec


@register_method("ssgrl")
class SemanticGraphHead(Method):
    """Semantic decoupling + gated GNN + per-class classifier on ``(B, D, h, w)`` features.

    Args:
        spec: the task; needs ``label_embeddings`` ``(C, E)`` (kept fixed, a buffer) and
            ``train_targets`` (its known positives build the adjacency).
        image_dim: class-feature size ``d``; a 1x1 conv + BatchNorm projects ``D -> d`` when it
            differs from ``D``. ``None`` keeps ``d = D``. Reference: 1024.
        inter_dim: intermediate size of the decoupling attention. Reference: 512.
        output_dim: size of ``o_c``; ``None`` uses ``d`` (the reference's default is 1024 = d).
        time_steps: GNN propagation steps ``T``. Reference: 3.
        class_chunk: classes per chunk in the decoupling attention (memory vs. loop length).
        loss: the registered training loss (:func:`~mlrkit.methods.losses.create_loss`),
            ``"partial_bce"`` by default (unknown entries ignored; the reference's).
        loss_options: the loss's keyword options, e.g. ``{"expected_positives": "voc"}``.
        input_pool: average-pool the input map with kernel = stride = ``input_pool`` first.
            Reference: 2 (ResNet-101 at 448 px: 14x14 -> 7x7); 1 on cached 7x7 features.
        residual: add a linear head on the pooled input and start the graph's classifier at
            zero (module docstring). Reference: no.
        graph_lr_mult: with ``residual``, the learning-rate factor of everything but the linear
            head (the decoupling, the graph and its classifier), so the graph adds to a linear
            head that has learned first.
    """

    input_kind = "spatial"

    def __init__(
        self,
        spec: TaskSpec,
        image_dim: int | None = 1024,
        inter_dim: int = 512,
        output_dim: int | None = None,
        time_steps: int = 3,
        class_chunk: int = 16,
        loss: str = "partial_bce",
        loss_options: dict | None = None,
        input_pool: int = 1,
        residual: bool = False,
        graph_lr_mult: float = 1.0,
    ) -> None:
        super().__init__(spec)
        if graph_lr_mult <= 0 or (graph_lr_mult != 1.0 and not residual):
            raise ValueError(f"graph_lr_mult is {graph_lr_mult}: give a factor > 0, and only "
                             f"with residual: true (it slows the graph against the linear head)")
        self.graph_lr_mult = graph_lr_mult
        if len(spec.feature_shape) != 3:
            raise ValueError(f"ssgrl needs spatial (D, h, w) features, got {spec.feature_shape}")
        embeddings = require_label_embeddings(spec, "ssgrl")
        self.register_buffer("label_embeddings", embeddings)
        in_dim = spec.feature_dim
        dim = in_dim if image_dim is None else image_dim
        output_dim = dim if output_dim is None else output_dim
        # The reference average-pools ResNet-101's 14x14 map at 448 px to 7x7 (AvgPool2d(2, 2)).
        self.input_pool = nn.AvgPool2d(input_pool) if input_pool > 1 else nn.Identity()
        self.projection = channel_projection(in_dim, dim)
        self.decoupling = SemanticDecoupling(dim, embeddings.shape[1], inter_dim, class_chunk)
        self.gnn = GatedGNN(dim, cooccurrence_adjacency(spec.train_targets), time_steps)
        self.fc = nn.Linear(2 * dim, output_dim)
        self.classifier = ElementWiseClassifier(spec.num_classes, output_dim)
        self.base = nn.Linear(in_dim, spec.num_classes) if residual else None
        if residual:
            nn.init.zeros_(self.classifier.weight)
            nn.init.zeros_(self.classifier.bias)
        self.loss = create_loss(loss, spec, **(loss_options or {}))

    def param_groups(self) -> list[dict]:
        """:meth:`Method.param_groups`; with ``graph_lr_mult`` the parameters outside the linear
        head in a group of their own at that factor."""
        groups = super().param_groups()
        if self.base is None:
            return groups
        base = {id(p) for p in self.base.parameters()}
        graph = [p for p in groups[0]["params"] if id(p) not in base]
        return moved_param_groups(groups, graph, self.graph_lr_mult)

    def decouple(self, inputs: Tensor, direct: bool = False) -> Tensor:
        """Class features ``F`` ``(B, C, d)`` from feature maps ``(B, D, h, w)``.

        ``direct`` runs the fully materialised reference attention instead of the chunked one.
        """
        tokens = self.projection(self.input_pool(inputs)).flatten(2).transpose(1, 2)  # (B, hw, d)
        return self.decoupling(tokens, self.label_embeddings, direct)

    def propagate(self, features: Tensor) -> Tensor:
        """Graph propagation, class features ``(B, C, d)`` → node states ``H`` ``(B, C, d)``."""
        return self.gnn(features)

    def classify(self, states: Tensor, features: Tensor) -> Tensor:
        """Logits ``(B, C)`` from node states ``H`` and class features ``F``, both ``(B, C, d)``."""
        return self.classifier(torch.tanh(self.fc(torch.cat((states, features), dim=-1))))

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None) -> MethodOutput:
        """``inputs`` ``(B, D, h, w)`` → logits ``(B, C)``; with ``targets`` ``(B, C)`` the loss
        of :meth:`training_loss` and its ``logs``."""
        features = self.decouple(inputs)
        logits = self.classify(self.propagate(features), features)
        if self.base is not None:
            logits = logits + self.base(self.input_pool(inputs).mean(dim=(2, 3)))
        if targets is None:
            return MethodOutput(logits)
        return self.training_loss(features, logits, targets, index, step)

    def training_loss(self, features: Tensor, logits: Tensor, targets: Tensor,
                      index: Tensor | None, step: StepInfo | None) -> MethodOutput:
        """The output with the loss of ``logits`` ``(B, C)`` (class features ``(B, C, d)`` unused
        here; ``index`` and ``step`` as the loss needs them)."""
        out = self.loss(logits, targets, index, step)
        return MethodOutput(logits, out.loss, out.logs)
