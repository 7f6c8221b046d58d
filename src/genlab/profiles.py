"""How big each experiment runs under ``genlab reproduce --profile {smoke,quick,full}`` (SPEC §13).

``PROFILES[experiment][profile]`` is the list of ``genlab run EXPERIMENT`` arguments of that
profile (``--out``, ``--device`` and ``--resume`` are added by ``reproduce``):

- ``full``: the experiment at its SPEC size, i.e. its defaults or the command documented in the
  README's experiment table (for example wgan's four Lipschitz methods at 30,000 iterations).
- ``quick``: each run in at most about 3 minutes on 2 CPU cores (all of them in under 30).
- ``smoke``: each run in seconds (the tests); the numbers mean nothing.

An argument may name another run of the same reproduction as ``{out}/EXPERIMENT/...``
(``OUT_PLACEHOLDER``): t5-finetune's full profile fine-tunes the model that t5-pretrain's run saved.
``reproduce`` replaces ``{out}`` by its folder and runs the named experiment first
(:func:`profile_needs`).

A new experiment adds one entry here; ``tests/test_reproduce.py`` checks that every registered
experiment has all three profiles and that every argument parses.
"""

from __future__ import annotations

import re

from genlab.errors import UnknownNameError

PROFILE_NAMES = ("smoke", "quick", "full")
OUT_PLACEHOLDER = "{out}"
_NEEDS = re.compile(re.escape(OUT_PLACEHOLDER) + r"/([A-Za-z0-9_-]+)")

PROFILES: dict[str, dict[str, list[str]]] = {
    "dcgan": {
        "full": [],  # 50 epochs, batch 64, FID on 10,000 samples
        "quick": ["--epochs", "2", "--subset", "12000", "--grid-epochs", "1", "2", "--fid-samples", "2000"],
        "smoke": ["--epochs", "1", "--max-steps", "5", "--grid-epochs", "1", "--fid-samples", "200"],
    },
    "classifier": {  # never --export: that would overwrite the shipped weights
        "full": ["--dataset", "fashion-mnist"],
        "quick": ["--dataset", "fashion-mnist", "--epochs", "2"],
        "smoke": ["--dataset", "fashion-mnist", "--epochs", "1", "--max-steps", "20", "--test-subset", "1000"],
    },
    "minimax": {
        "full": [],
        "quick": [],
        "smoke": ["--iterations", "30", "--sweep-points", "6", "--sweep-iterations", "40"],
    },
    "bandit": {
        "full": [],
        "quick": [],
        "smoke": ["--steps", "50", "--seeds", "4", "--estimator-samples", "2000"],
    },
    "divergence": {
        "full": [],
        "quick": [],
        "smoke": ["--steps", "30", "--p-samples", "500", "--batch-size", "64"],
    },
    "gan": {
        "full": ["--generator-loss", "non-saturating"],  # 10 epochs; the minimax twin is its own command
        "quick": ["--epochs", "1", "--subset", "12000", "--fid-samples", "2000"],
        "smoke": ["--subset", "192", "--batch-size", "32", "--epochs", "1", "--fid-samples", "200", "--log-every", "2"],
    },
    "wgan": {
        "full": ["--lipschitz", "spectral-norm", "weight-clip", "gradient-penalty", "spectral-regularization",
                 "--iterations", "30000", "--lr-critic", "1e-3", "--lr-generator", "1e-3"],
        "quick": ["--lipschitz", "spectral-norm", "weight-clip", "gradient-penalty", "spectral-regularization",
                  "--iterations", "3000", "--lr-critic", "1e-3", "--lr-generator", "1e-3", "--w1-every", "500"],
        "smoke": ["--lipschitz", "spectral-norm", "weight-clip", "--iterations", "60", "--w1-every", "30",
                  "--log-every", "10", "--eval-samples", "300", "--curve-samples", "100", "--target-samples", "1000"],
    },
    "vae": {
        "full": ["--seeds", "3"],  # 10,000 iterations per seed, IWAE k = 1,000
        "quick": ["--seeds", "2", "--iterations", "3000", "--iw-samples", "200", "--iw-test-subset", "2000"],
        "smoke": ["--seeds", "2", "--iterations", "20", "--batch-size", "50", "--subset", "1000", "--test-subset",
                  "100", "--iw-samples", "5", "--eval-every", "10", "--log-every", "5", "--checkpoint-every", "10"],
    },
    "continual": {
        "full": [],  # 10 permuted tasks, naive / EWC / rehearsal, MLP width 1000
        "quick": ["--tasks", "3", "--eval-samples", "2000"],
        "smoke": ["--tasks", "2", "--max-steps", "16", "--batch-size", "32", "--replay-batch", "16",
                  "--memory-per-task", "32", "--fisher-samples", "32", "--eval-samples", "200", "--probe-every", "4",
                  "--hidden", "32"],
    },
    "reinforce": {
        "full": ["--task", "mnist-gt5"],  # 3 seeds x (plain, baseline, supervised)
        "quick": ["--task", "mnist-gt5", "--seeds", "2", "--steps", "1000"],
        "smoke": ["--task", "threshold", "--estimator", "plain", "--no-supervised", "--steps", "30", "--seeds", "1",
                  "--variance-every", "15", "--variance-estimates", "3"],
    },
    "optimizers": {
        "full": [],  # 6 optimisers x 3 learning rates x 3 repeats x 15 epochs
        "quick": ["--epochs", "4", "--repeats", "2"],
        "smoke": ["--epochs", "1", "--subset", "256", "--test-subset", "200", "--batch-size", "64", "--repeats", "1",
                  "--optimizers", "sgd", "adam", "--lrs", "0.01", "--log-every", "4"],
    },
    "summarize": {
        "full": [],  # 20 epochs (best validation epoch) on the XSum protocol: 2,740 official test pairs
        "quick": ["--epochs", "1", "--max-steps", "250", "--test-limit", "100", "--beam-size", "2"],
        "smoke": ["--max-steps", "3", "--epochs", "1", "--test-limit", "3", "--d-model", "32", "--d-ff", "64",
                  "--n-layers", "1", "--batch-size", "8", "--max-source-len", "64", "--max-target-len", "12",
                  "--precision", "fp32", "--n-examples", "2"],
    },
    "t5-pretrain": {
        "full": [],  # 2 epochs of span corruption on the non-test XSum and BBC News articles
        "quick": ["--epochs", "1", "--max-steps", "100"],
        "smoke": ["--epochs", "1", "--max-steps", "3", "--d-model", "32", "--d-ff", "64", "--d-kv", "8",
                  "--num-layers", "1", "--batch-size", "8", "--input-length", "32", "--corpus-documents", "50"],
    },
    "t5-finetune": {
        # SPEC fine-tunes the pretrained t5-small, which cannot be had offline: the full profile
        # fine-tunes this reproduction's own t5-pretrain model instead (docs/results/summarize.md).
        "full": ["--init", "{out}/t5-pretrain/model", "--epochs", "6"],
        "quick": ["--random-init", "--max-steps", "40", "--test-limit", "20", "--batch-size", "4",
                  "--max-source-len", "256", "--beam-size", "2"],
        "smoke": ["--random-init", "--max-steps", "2", "--test-limit", "3", "--batch-size", "4", "--max-source-len",
                  "64", "--max-target-len", "12", "--beam-size", "2", "--n-examples", "2"],
    },
}


_FID = ("torchmetrics.image.fid", "torchmetrics.image.kid", "torchmetrics.image.inception")
_T5 = ("transformers.models.t5.modeling_t5", "transformers.models.auto.tokenization_auto")

# Modules a run imports on the way (not at the top of its module) that take seconds to import:
# ``reproduce``'s forkserver imports them once for all its runs (genlab.reproduce).
PRELOAD: dict[str, tuple[str, ...]] = {
    "dcgan": _FID,
    "gan": _FID,
    "summarize": ("rouge_score.rouge_scorer",),
    "t5-pretrain": _T5,
    "t5-finetune": (*_T5, "rouge_score.rouge_scorer"),
}


def profile_args(experiment: str, profile: str) -> list[str]:
    """The ``genlab run experiment`` arguments of ``profile``.

    Raises:
        KeyError: an unknown experiment (naming the known ones) or profile (naming the three).
    """
    if profile not in PROFILE_NAMES:
        raise UnknownNameError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    if experiment not in PROFILES:
        raise UnknownNameError(f"no reproduce profiles for experiment {experiment!r}; add it to genlab/profiles.py "
                       f"(known: {', '.join(sorted(PROFILES))})")
    return list(PROFILES[experiment][profile])


def profile_needs(experiment: str, profile: str) -> list[str]:
    """The experiments whose run directory ``experiment``'s ``profile`` reads (``{out}/NAME/...``)."""
    return sorted({m.group(1) for arg in profile_args(experiment, profile) for m in _NEEDS.finditer(arg)})
