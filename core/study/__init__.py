"""Statistics of the blind A/B study (docs/study.md#statistics), torch-free so the web app can call it.

`votes` (schema, exclusions, canonical outcomes) -> `bradley_terry` (anchored MLE) -> `bootstrap` (cluster intervals,
ranks) -> `matrices`, `significance`, `raters`, `agreement`, `planning` -> `report.study_report`; `export` writes
FastChat-shaped rows.
"""
