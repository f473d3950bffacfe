"""Workers: the only place where storage and core meet (Celery tasks with the jobs issue; foreground jobs now)."""
