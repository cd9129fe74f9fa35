"""CLI and job entry points: configs, the `portraitflow` command and how each flow is launched."""
