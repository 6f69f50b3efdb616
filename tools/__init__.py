"""Developer tools that are not part of the `biogpt` package: `python -m tools.demo build` rebuilds the bundled
demo checkpoints in `biogpt/demo_models/`."""
