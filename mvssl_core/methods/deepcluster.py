"""DeepCluster-v2 [0] and its ER variant: projector + prototypes set to k-means centroids of a memory
bank each epoch, cross-entropy to the k-means assignments (or minus the discrete ER bound [1]).

[0] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments",
    NeurIPS 2020, Appendix (DeepCluster-v2).
[1] Rodriguez-Galvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
    Learning", ICML 2023, arXiv 2307.10907.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvssl_core import _checks as checks
from mvssl_core import bounds, dist
from mvssl_core.heads import (
    DEEPCLUSTER_PROJECTOR,
    DEEPCLUSTER_PROTOTYPES,
    MLPSpec,
    Prototypes,
    PrototypeSpec,
    build_mlp,
)
from mvssl_core.losses import ER_TERMS, deepcluster_loss, er_loss, spherical_kmeans
from mvssl_core.methods.step import (
    StepOutput,
    assignment_metrics,
    check_progress,
    check_views,
    naming_views,
    spec_arg,
    forward_crops,
    projection_metrics,
    report,
)

__all__ = ["DeepCluster"]


class DeepCluster(nn.Module):
    """DeepCluster-v2: each sample's target is its cluster in last epoch's k-means of the memory bank [0].

    State: a memory bank of the normalised projections of the ``n_global`` global crops of every
    training sample (index ``indices`` in the data set), written at each step; at the start of
    each epoch (:meth:`start_epoch`) each prototype set h runs spherical k-means (10 iterations) on
    the bank of crop ``h % n_global``, its prototypes are set to the centroids and every sample's
    assignment is stored. The loss (:func:`mvssl_core.losses.deepcluster_loss`) is the
    cross-entropy of every crop's scores / tau against the sample's assignment, averaged over the
    prototype sets. As in the official code, the prototypes are the k-means centroids and get no
    gradient (``freeze_prototypes=True``; its ``freeze_prototypes_niters`` outlasts the run), and
    the bank is filled by one forward pass over the data before the first step
    (:meth:`fill_memory_`, called by the trainer when :attr:`prefill` is true), so the first
    step already has targets. Without that pass (a caller that never fills the bank) there is
    no target until the bank is full and the loss is 0 (zero gradient).

    The bank is replicated on every process (each step all-gathers the projections and indices),
    so every process holds the bank of one process; rank 0 runs the k-means and broadcasts its centroids
    and assignments (:meth:`recluster_`). Memory: ``n_global * dataset_size * dim`` floats per process
    (1.3 GB for ImageNet at dim 128).

    ER variant (``er=True``, [1]): the loss is minus the discrete ER bound on the soft assignments
    ``softmax(scores / tau)`` over the crop pairs (global target crop, other crop), for each
    prototype set (:func:`mvssl_core.bounds.er_bound_discrete_multicrop`); the memory bank and the
    k-means re-initialisation of the prototypes each epoch stay as they are, the hard k-means
    targets are not used. It trains from the first step.

    Args:
        backbone: encoder mapping an image batch (any crop size) to (N, feature_dim) features.
        feature_dim: the backbone's output dimension.
        dataset_size: number of training samples (the bank's rows); ``indices`` lie in [0, dataset_size).
        projector: projection MLP (:data:`mvssl_core.heads.DEEPCLUSTER_PROJECTOR`).
        prototypes: prototype sets (:data:`mvssl_core.heads.DEEPCLUSTER_PROTOTYPES`, 3 x 3000).
        n_global: number of global crops kept in the bank (2).
        temperature: tau (0.1).
        kmeans_iters: k-means iterations (10).
        seed: seed of the k-means initialisation (with the epoch).
        er: use the discrete ER bound as the loss.
        er_terms: with ``er``, maximise \"both\" terms of the bound, or only the \"entropy\" or the
            \"reconstruction\" term (the ablation; both are still logged).
        target_temperature: tau of the ER targets (None: ``temperature``).
        freeze_prototypes: the prototypes get no gradient between re-clusterings (the official
            code); False trains them by gradient (this library's earlier variant, kept as an option).
        prefill: fill the bank with a forward pass over the data before training (the official
            code's ``init_memory``); the trainer reads this flag.
        monitor_kappa: vMF concentration of the reported continuous "entropy".
        distributed: bank, losses and metrics over the global batch.
    """

    memory: torch.Tensor
    seen: torch.Tensor
    assignments: torch.Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        dataset_size: int,
        projector: MLPSpec = DEEPCLUSTER_PROJECTOR,
        prototypes: PrototypeSpec = DEEPCLUSTER_PROTOTYPES,
        n_global: int = 2,
        temperature: float = 0.1,
        kmeans_iters: int = 10,
        seed: int = 0,
        er: bool = False,
        er_terms: str = "both",
        target_temperature: float | None = None,
        freeze_prototypes: bool = True,
        prefill: bool = True,
        monitor_kappa: float = 10.0,
        distributed: bool = False,
    ) -> None:
        super().__init__()
        projector = spec_arg(projector, MLPSpec, "projector")
        self.backbone = backbone
        self.projector = build_mlp(feature_dim, projector)
        self.prototypes = Prototypes(projector.out, spec_arg(prototypes, PrototypeSpec, "prototypes"))
        checks.positive_int(dataset_size, "dataset_size")
        if dataset_size < self.prototypes.spec.n_prototypes:
            raise ValueError(
                f"dataset_size ({dataset_size}) must be at least n_prototypes ({self.prototypes.spec.n_prototypes})"
            )
        self.n_global = checks.positive_int(n_global, "n_global", minimum=1)
        self.temperature = checks.positive(temperature, "temperature")
        self.kmeans_iters = checks.positive_int(kmeans_iters, "kmeans_iters", minimum=0)
        self.seed = checks.positive_int(seed, "seed", minimum=0)
        self.er = checks.boolean(er, "er")
        self.er_terms = checks.choice(er_terms, "er_terms", ER_TERMS)
        self.target_temperature = (
            None if target_temperature is None else checks.positive(target_temperature, "target_temperature")
        )
        self.freeze_prototypes = checks.boolean(freeze_prototypes, "freeze_prototypes")
        self.prefill = checks.boolean(prefill, "prefill")
        self.monitor_kappa = checks.positive(monitor_kappa, "monitor_kappa")
        self.distributed = checks.boolean(distributed, "distributed")
        self.register_buffer("memory", torch.zeros(self.n_global, dataset_size, projector.out))
        self.register_buffer("seen", torch.zeros(dataset_size, dtype=torch.bool))
        self.register_buffer(
            "assignments", torch.full((self.prototypes.spec.heads, dataset_size), -1, dtype=torch.long)
        )

    @property
    def clustered(self) -> bool:
        """True once k-means has assigned every sample."""
        return bool((self.assignments[0] >= 0).all())

    @torch.no_grad()
    def recluster_(self, epoch: int) -> None:
        """k-means on the memory bank: prototypes <- centroids, assignments <- clusters.

        Distributed (``distributed=True`` in a process group), only rank 0 runs the k-means and broadcasts
        its centroids and assignments (:func:`mvssl_core.dist.broadcast_`): the k-means sums with
        ``index_add_``, which is nondeterministic on CUDA, so replicas clustering on their own would hold
        different prototypes (frozen ones get no gradient for DDP to average) and targets. The other
        ranks wait in the broadcast meanwhile (the process group's timeout bounds that wait). With one
        process the result is that of :func:`~mvssl_core.losses.spherical_kmeans` on the bank.
        """
        clusters_here = not self.distributed or dist.rank() == 0
        for h, head in enumerate(self.prototypes.heads):
            if clusters_here:
                generator = torch.Generator().manual_seed(
                    self.seed * 1_000_003 + epoch * len(self.prototypes.heads) + h
                )
                centroids, assignment = spherical_kmeans(
                    self.memory[h % self.n_global], head.weight.shape[0], self.kmeans_iters, generator=generator
                )
                head.weight.copy_(centroids.to(head.weight.dtype))
                self.assignments[h] = assignment
            if self.distributed:
                dist.broadcast_(head.weight.detach(), src=0)
        if self.distributed:
            dist.broadcast_(self.assignments, src=0)

    def start_epoch(self, epoch: int) -> None:
        """Re-cluster the memory bank (DeepCluster-v2 does it at the start of every epoch), once it is full."""
        if bool(self.seen.all()):
            self.recluster_(epoch)

    def _indices(self, indices: object, n: int, values: bool) -> torch.Tensor:
        """The batch's data-set indices, a long ``(n,)`` tensor; with ``values`` (or on the CPU, where it
        costs no device sync) also that they lie in [0, dataset_size)."""
        if indices is None:
            raise ValueError("DeepCluster needs the samples' data-set indices: pass indices=(N,) long tensor")
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long or indices.shape != (n,):
            raise ValueError(f"indices must be a long tensor of shape ({n},)")
        if (values or indices.device.type == "cpu") and not bool(self._in_range(indices)):
            raise self._range_error(indices)
        return indices

    def _in_range(self, indices: torch.Tensor) -> torch.Tensor:
        return ((indices >= 0) & (indices < self.seen.shape[0])).all()

    def _range_error(self, indices: torch.Tensor) -> ValueError:
        return ValueError(
            f"indices must be data-set indices in [0, dataset_size = {self.seen.shape[0]}), "
            f"got values from {int(indices.min())} to {int(indices.max())}"
        )

    def forward(
        self, views: list[torch.Tensor], progress: float = 0.0, indices: torch.Tensor | None = None,
        metrics: bool = True,
    ) -> StepOutput:
        """The step's loss and metrics; ``indices`` (N,) are the samples' rows in the bank.

        On an accelerator the range of ``indices`` is checked within the sync that asks whether the bank
        is clustered (the DeepCluster loss); the ER loss has no such sync to share, and there an index out
        of range meets torch's own index check when the bank is written.
        """
        views = check_views(views, max(2, self.n_global))
        metrics = checks.boolean(metrics, "metrics")
        progress = check_progress(progress)
        indices = self._indices(indices, views[0].shape[0], values=False)
        n_crops, g = len(views), self.n_global
        self.prototypes.normalize_()
        z = F.normalize(self.projector(forward_crops(self.backbone, views)), dim=1)
        scores = self.prototypes(z, frozen=self.freeze_prototypes)
        with naming_views():
            extra = {}
            if self.er:
                terms = []
                for s in scores:
                    crops = list(s.chunk(n_crops))
                    terms.append(
                        bounds.er_bound_discrete_multicrop(
                            crops,
                            crops[:g],
                            temperature=self.temperature,
                            target_temperature=self.target_temperature,
                            distributed=self.distributed,
                        )
                    )
                h = torch.stack([t.entropy for t in terms]).mean()
                rec = torch.stack([t.reconstruction for t in terms]).mean()
                loss, extra = er_loss(h, rec, self.er_terms)
            else:
                idx = indices.to(self.assignments.device)
                flags = [(self.assignments[0] >= 0).all()]  # self.clustered
                if indices.device.type != "cpu":  # one sync for both flags
                    flags.append(self._in_range(idx))
                clustered, *in_range = torch.stack(flags).tolist()
                if not all(in_range):
                    raise self._range_error(indices)
                if clustered:
                    targets = [a[idx].repeat(n_crops) for a in self.assignments]
                    loss = deepcluster_loss(scores, targets, self.temperature, self.distributed)
                else:  # the bank is still filling: no targets yet
                    loss = 0.0 * sum(s.float().sum() for s in scores)
            zs = z.chunk(n_crops)
            self._remember_(zs[:g], indices)
            if not metrics:
                return StepOutput(loss, {})
            first = scores[0].chunk(n_crops)
            discrete = assignment_metrics(
                first[1], first[0], self.temperature, self.target_temperature, self.distributed
            )
            return report(loss, projection_metrics(zs[0], zs[1], self.monitor_kappa, self.distributed), discrete, extra)

    @torch.no_grad()
    def fill_memory_(self, views: list[torch.Tensor], indices: torch.Tensor) -> None:
        """Write the global-crop projections of one batch into the bank (the pass before training)."""
        views = check_views(views, max(2, self.n_global))
        indices = self._indices(indices, views[0].shape[0], values=True)
        g = self.n_global
        z = F.normalize(self.projector(forward_crops(self.backbone, views[:g])), dim=1)
        self._remember_(z.chunk(g), indices)

    @torch.no_grad()
    def _remember_(self, projections: tuple[torch.Tensor, ...], indices: torch.Tensor) -> None:
        """Write this step's global-crop projections into the bank rows of their samples."""
        idx = indices.to(self.memory.device)
        rows = torch.stack([zj.detach() for zj in projections], dim=1)  # (N, global crops, dim)
        if self.distributed:  # one gather for all global crops
            idx, rows = dist.gather(idx), dist.gather(rows)
        for j in range(len(projections)):
            self.memory[j, idx] = rows[:, j].to(self.memory.dtype)
        self.seen[idx] = True

    def after_optimizer_step(self, progress: float) -> None:
        """Nothing to do: the bank is written during the step, the clustering at :meth:`start_epoch`."""
        check_progress(progress)
