"""The blind rating page at /rate (docs/study.md#blind-ab-study): raters answer two questions about two unlabelled images."""
