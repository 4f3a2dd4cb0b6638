"""kvviz: make the KV cache of a real transformer visible.

The engine (everything here except ``kvviz/ui/``) runs without Streamlit: load a model, step it with or without
a cache, and get plain records back::

    from kvviz.models import load_model
    from kvviz.stepper import CompareStepper

    loaded = load_model("smollm2-135m")
    stepper = CompareStepper(loaded)
    record = stepper.prefill("What is the capital of France?", chat_template=True)
    record = stepper.step()
"""

__version__ = "0.1.0"
