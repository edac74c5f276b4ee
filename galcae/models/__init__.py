"""Models shipped with galcae, usable by name (``galcae infer --model survey``).

Each is a directory holding ``model.safetensors`` + ``model.json`` (as ``galcae train``
writes them) and ``report.html``, its model card with the evaluation on held-out
simulations. :func:`galcae.card.resolve_model` finds them; this package holds only data.
"""
