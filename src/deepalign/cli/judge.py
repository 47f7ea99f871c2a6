"""``deepalign judge RUN_DIR --judges ...``: add verdicts of new judges to a finished run and
rebuild its report; ``deepalign judge FILE --out RUN_DIR --judges ...`` scores a file of
published responses (prompt and response columns) the same way."""

from deepalign.evaluation.judging import JudgeOptions, judge_run

OPTIONS = (JudgeOptions,)
POSITIONAL = "run_dir"


def run(options: JudgeOptions) -> int:
    judge_run(options)
    return 0
