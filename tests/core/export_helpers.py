"""Shared by the export tests: how an exported student's pipeline is called at the student's own timesteps."""


def steps_kwargs(summary: dict) -> dict:
    """num_inference_steps where the scheduler's own grid is the student's, else the trained timesteps explicitly."""
    if summary["exact_num_inference_steps"]:
        return {"num_inference_steps": summary["steps"]}
    return {"timesteps": summary["timesteps"]}
