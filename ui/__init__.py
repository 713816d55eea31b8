"""The Gradio page (layout and wiring in ``page``, the one adapter to the engine in ``adapter``)."""
