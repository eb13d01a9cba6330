"""IGS: task-driven population line patterns by iterative gradient sampling (seed 002, Alg. 1, eq. 9).

Seed 002 learns one Cartesian line pattern per dataset, acceleration and downstream task: starting from
the centre line (here: kadapt's centred ACS block, which holds it), each round runs the whole training set
through a frozen pipeline -- line mask ``w`` -> masked k-space -> reconstruction -> task model -> task
loss -- accumulates ``dL/dw`` and adds the free line with the most negative gradient. The order in which
lines are added is one score vector: its top-k at any budget is the IGS pattern of that budget, so one
``fixed-mask`` bundle serves every R (docs/sampler.md, "IGS fixed-mask bundles").

- :mod:`.pipeline` -- the data interface (:class:`TaskSample`: ``kspace (C, H, W)``, ``target (H, W)``,
  ``label``), the zero-filled RSS reconstruction, the task losses L1 / SSIM / soft Dice / cross-entropy;
- :mod:`.recon` -- :class:`LearnedRecon`, a frozen learned reconstruction (ACS scale and maps) in the loop;
- :mod:`.search` -- :func:`learn_igs` (the entry point: ``-> scores, history``), :func:`accumulated_gradient`,
  :func:`next_line` (eq. 9), :func:`igs_scores`;
- :mod:`.task_models` -- the U-Net segmenter, the small CNN classifier, :func:`train_task_model`
  (fully sampled training, optional fine-tuning on a pattern);
- :mod:`.bundle` -- :func:`evaluate_pattern`, :func:`validate_igs`, :func:`write_igs_bundle`.

Everything is CPU-sized torch; randomness (task-model initialisation and batches) comes from explicit
seeds / ``torch.Generator``; IGS itself is deterministic.
"""

from kadapt.trainer.igs.bundle import evaluate_pattern, validate_igs, write_igs_bundle
from kadapt.trainer.igs.pipeline import (
    TASK_OF_LOSS,
    TaskSample,
    soft_dice_loss,
    task_loss,
    zero_filled_rss,
)
from kadapt.trainer.igs.recon import LearnedRecon
from kadapt.trainer.igs.search import IgsHistory, accumulated_gradient, igs_scores, learn_igs, next_line
from kadapt.trainer.igs.task_models import (
    TaskClassifier,
    TaskSegmenter,
    make_classifier,
    make_segmenter,
    train_task_model,
)

__all__ = [
    "TASK_OF_LOSS",
    "IgsHistory",
    "LearnedRecon",
    "TaskClassifier",
    "TaskSample",
    "TaskSegmenter",
    "accumulated_gradient",
    "evaluate_pattern",
    "igs_scores",
    "learn_igs",
    "make_classifier",
    "make_segmenter",
    "next_line",
    "soft_dice_loss",
    "task_loss",
    "train_task_model",
    "validate_igs",
    "write_igs_bundle",
    "zero_filled_rss",
]
