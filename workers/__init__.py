"""Workers: the only place where storage and core meet (the Celery tasks and the foreground jobs)."""
