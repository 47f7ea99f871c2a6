"""What a person reads of a run: its Markdown report and summary (:mod:`~deepalign.reports.run_report`),
the plots (:mod:`~deepalign.reports.plots`) and the judges' validations a report prints
(:mod:`~deepalign.reports.validations`). Reports only format what :mod:`deepalign.metrics`
computes."""
