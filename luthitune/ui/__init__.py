"""The workbench's local web UI (``luthitune ui``): Gradio Blocks over the same graph and database as the CLI."""
