"""attnexp's Hydra launchers (``conf/hydra/launcher/``)."""
