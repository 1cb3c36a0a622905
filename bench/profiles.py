"""Run profiles: how large every task's work is.

Each task maps these names to its own settings (network size, sample counts, budget).
"""

PROFILES: dict[str, str] = {
    "smoke": "tiny settings for tests and CI: every task and method in seconds",
    "quick": "the embedded default on 2 CPU cores: a whole matrix in minutes",
    "paper": "the paper's scale (full data, full trainings): for a GPU",
}
DEFAULT_PROFILE = "quick"
