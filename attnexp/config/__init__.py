"""From yaml to a run's config: where the config tree is (``paths``), the cell that names a run
(``cell``), composition and the project's resolvers (``compose``), a variant's yaml composed by name
(``attention``), matched budgets (``budget``), what each value may be (``values``) and the refusal of
bad values (``validate``).

May import: attnexp.attention, attnexp.data, attnexp.models, attnexp.tasks, attnexp.util.
"""
