"""`python -m panel_pipeline.local stack up|status|down` and `python -m panel_pipeline.local dev`."""

from panel_pipeline.local.cli import main

if __name__ == "__main__":
    main(prog_name="python -m panel_pipeline.local")
