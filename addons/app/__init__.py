"""The application around the addons: the `sessiontap` command line (cli), the in-process proxy run (runner),
mitm.yaml (config), capture files in and out (capture, har) and loopback servers on a thread (background)."""
