"""The run directory: the typed, versioned run log (:mod:`~deepalign.runs.runlog`: the run
record, response rows, verdicts) and its files on disk (:mod:`~deepalign.runs.rundir`:
append-only, resumable, locked). Every stage that generates writes one; metrics read it."""
