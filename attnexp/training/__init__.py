"""Running a ``RunPlan``: the pipeline (data, model, trainer, fit, test, record), the run's
callbacks, W&B, the attention figures and text generation.

May import: attnexp.attention, attnexp.config, attnexp.data, attnexp.models, attnexp.runs,
attnexp.tasks, attnexp.util.
"""
