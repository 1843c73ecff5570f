"""Where people already train and look: Lightning and Hugging Face Trainer callbacks,
TensorBoard and MLflow export.

Each submodule imports its framework lazily (on first use), so ``import gradhealth.integrations``
costs nothing and needs none of them:

- :mod:`gradhealth.integrations.export`: ``to_tensorboard(run_dir, logdir)`` and
  ``to_mlflow(run_dir, ...)`` (``pip install 'gradhealth[tensorboard]'`` / ``[mlflow]``);
- :mod:`gradhealth.integrations.lightning`: ``GradHealthCallback`` for ``lightning.pytorch``
  (``pip install 'gradhealth[lightning]'``);
- :mod:`gradhealth.integrations.transformers`: ``GradHealthCallback`` for the Hugging Face
  ``Trainer`` (``pip install 'gradhealth[transformers]'``).

See ``docs/integrations.md`` for the hook order of each framework and what gradhealth measures there.
"""
