"""``deepalign study``: the end-to-end miniature replication (the main job)."""

from deepalign.study import StudyOptions, run_study

OPTIONS = (StudyOptions,)


def run(options: StudyOptions) -> int:
    run_study(options)
    return 0
