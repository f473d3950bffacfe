"""Storage: settings, and (with the jobs issue) the database models, sessions and migrations."""
