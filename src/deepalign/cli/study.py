"""``deepalign study``: the end-to-end miniature replication (the main job)."""

from deepalign.study import StudyConfig, run_study

OPTIONS = (StudyConfig,)


def run(options: StudyConfig) -> int:
    run_study(options)
    return 0
