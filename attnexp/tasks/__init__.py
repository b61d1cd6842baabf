"""What is trained and how it is judged: each task's metric declarations (``spec``: no torch),
the LightningModules that train them (``classifier``, ``lm`` on ``module``), the losses and the
optimiser's parameter groups and schedules (``optim``).

May import: attnexp.data, attnexp.util.
"""
