"""The blind rating page at /rate (STUDY.md §2): raters answer two questions about two unlabelled images."""
