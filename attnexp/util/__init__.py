"""Small helpers every layer may use: checks of config values, atomic files, plotting, Markdown
tables, the terminal's quiet logging, seeding, the CPU core count and the C allocator's setting for long sequences (``memory``).

May import: nothing of attnexp.
"""
