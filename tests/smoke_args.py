"""The tiny configuration of every registered experiment: a few steps on a slice of the real
data, through the real CLI (``tests/test_registry.py`` runs them all).

``{pairs}`` stands for a JSONL file of 200 real XSum pairs that the test writes.
"""

SMOKE_ARGS: dict[str, list[str]] = {
    "dcgan": ["--subset", "320", "--epochs", "1", "--fid-samples", "200", "--log-every", "1"],
    "gan": ["--subset", "192", "--batch-size", "32", "--epochs", "1", "--fid-samples", "200", "--log-every", "2"],
    "wgan": ["--iterations", "60", "--w1-every", "30", "--log-every", "10", "--eval-samples", "300",
             "--curve-samples", "100", "--target-samples", "1000"],
    "vae": ["--iterations", "20", "--batch-size", "50", "--subset", "1000", "--test-subset", "100", "--iw-samples", "5",
            "--eval-every", "10", "--log-every", "5", "--checkpoint-every", "10"],
    "minimax": ["--iterations", "30", "--sweep-points", "6", "--sweep-iterations", "40"],
    "bandit": ["--steps", "50", "--seeds", "4", "--estimator-samples", "2000"],
    "divergence": ["--steps", "30", "--p-samples", "500", "--batch-size", "64"],
    "continual": ["--tasks", "2", "--max-steps", "16", "--batch-size", "32", "--replay-batch", "16",
                  "--memory-per-task", "32", "--fisher-samples", "32", "--eval-samples", "200", "--probe-every", "4",
                  "--hidden", "32"],
    "reinforce": ["--steps", "20", "--seeds", "2", "--subset", "512", "--eval-every", "5", "--variance-every", "10",
                  "--variance-estimates", "4"],
    "optimizers": ["--epochs", "1", "--subset", "256", "--test-subset", "200", "--batch-size", "64", "--repeats", "2",
                   "--lrs", "0.01", "--log-every", "4"],
    "summarize": ["--data", "{pairs}", "--max-steps", "3", "--epochs", "1", "--test-limit", "3", "--d-model", "32",
                  "--d-ff", "64", "--n-layers", "1", "--batch-size", "8", "--max-source-len", "64",
                  "--max-target-len", "12", "--precision", "fp32"],
    "t5-finetune": ["--random-init", "--data", "{pairs}", "--max-steps", "2", "--test-limit", "3", "--batch-size", "4",
                    "--max-source-len", "64", "--max-target-len", "12", "--beam-size", "2"],
    "classifier": ["--dataset", "mnist", "--epochs", "1", "--max-steps", "20", "--test-subset", "1000"],
}

# Experiments whose lifecycle is genlab.engine.Run, with options under which the test hook's
# step (STOP_AFTER) falls inside the run, and the per-step metrics file compared after resuming.
RESUME_ARGS: dict[str, tuple[list[str], int, str]] = {
    "dcgan": (["--subset", "40", "--batch-size", "8", "--epochs", "2", "--fid-samples", "0", "--log-every", "1"], 7,
              "metrics/steps.jsonl"),
    "gan": (["--subset", "48", "--batch-size", "8", "--epochs", "2", "--fid-samples", "0", "--log-every", "2",
             "--probe-steps", "3"], 8, "metrics/steps.jsonl"),
    "vae": (["--iterations", "20", "--batch-size", "50", "--subset", "1000", "--test-subset", "100",
             "--iw-samples", "5", "--eval-every", "10", "--log-every", "5", "--checkpoint-every", "10"], 15,
            "metrics/eval.jsonl"),
    # step k falls inside the second unit (a Lipschitz method; a (method, seed) training)
    "wgan": (["--lipschitz", "gradient-penalty", "spectral-regularization", "--iterations", "60", "--w1-every", "30",
              "--log-every", "10", "--eval-samples", "300", "--curve-samples", "100", "--target-samples", "1000"], 75,
             "metrics/steps.jsonl"),
    "reinforce": (["--task", "threshold", "--estimator", "plain", "baseline", "--no-supervised", "--steps", "20",
                   "--seeds", "1", "--subset", "512", "--eval-every", "5", "--variance-every", "10",
                   "--variance-estimates", "4"], 27, "metrics/curves.csv"),
    # continual: step 44 is in the third job (rehearsal), inside its second task; optimizers: step 6 is
    # inside epoch 2 and inside a logging block; classifier: step 12 is inside its epoch
    "continual": (SMOKE_ARGS["continual"], 44, "metrics/steps.jsonl"),
    "optimizers": (["--epochs", "2", "--subset", "256", "--test-subset", "200", "--batch-size", "64", "--repeats", "2",
                    "--lrs", "0.01", "--log-every", "3"], 6, "metrics/steps.csv"),
    "classifier": (SMOKE_ARGS["classifier"], 12, "metrics/steps.jsonl"),
    "summarize": (["--data", "{pairs}", "--epochs", "2", "--test-limit", "2", "--d-model", "32", "--d-ff", "64",
                   "--n-layers", "1", "--batch-size", "32", "--max-source-len", "64", "--max-target-len", "12",
                   "--precision", "fp32", "--beam-size", "1"], 8, "metrics/steps.jsonl"),
    "t5-finetune": (["--random-init", "--data", "{pairs}", "--epochs", "2", "--test-limit", "2", "--batch-size", "32",
                     "--max-source-len", "64", "--max-target-len", "12", "--beam-size", "1"], 8,
                    "metrics/steps.jsonl"),
}

# t5-pretrain (issue 18): span corruption on the first 50 non-test corpus documents (979 training pieces of
# <= 32 tokens, 123 batches of 8: steps 3 and 6 stay inside the epoch), a few steps of a tiny T5
SMOKE_ARGS["t5-pretrain"] = ["--epochs", "1", "--max-steps", "3", "--d-model", "32", "--d-ff", "64", "--d-kv", "8",
                             "--num-layers", "1", "--batch-size", "8", "--input-length", "32",
                             "--corpus-documents", "50"]
RESUME_ARGS["t5-pretrain"] = (SMOKE_ARGS["t5-pretrain"][:3] + ["6"] + SMOKE_ARGS["t5-pretrain"][4:], 3,
                              "metrics/steps.jsonl")
