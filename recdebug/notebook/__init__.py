"""The notebook layer: the ``%%recloop`` and ``%recdebug`` magics, thin shells over ``cell`` and
``returnn_debug`` (which work without IPython), and the headless demo."""
