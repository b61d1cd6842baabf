"""Small helpers every layer may use: checks of config values, atomic files, plotting, Markdown
tables, the terminal's quiet logging, seeding and the CPU core count.

May import: nothing of attnexp.
"""
