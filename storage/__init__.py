"""Storage: settings, the database (models, sessions, repository functions, migrations) and artifact paths."""
