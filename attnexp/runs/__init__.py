"""One run on disk: the run dir and its file names (``layout``), its identity (``identity``: the
config hash), its record (``record``: ``results.json``, its one writer and reader), what produced it
(``provenance``), its checkpoints (``checkpoint``), the claim one live process holds on it (``claim``), and the one start step (``prepare``) that turns
a composed config into a frozen ``RunPlan``.

May import: attnexp.config, attnexp.tasks, attnexp.util.
"""
