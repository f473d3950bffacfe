"""The studio web app (Gradio 6): Runs, Teachers, Compare, Leaderboard tabs over the database and the job queue.

Each tab module holds its handlers (plain functions over a `Studio` context, tested without a browser) and then the
function that lays the tab out and wires it. `page.py` assembles the tabs; `server.py` mounts the page on FastAPI."""
