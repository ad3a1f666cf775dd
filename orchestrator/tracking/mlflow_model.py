"""The registered model's code, logged as an MLflow "model from code": loading it unpickles nothing.

MLflow logs this file beside the checkpoint. `mlflow.pyfunc.load_model("models:/acla-car-q10@budget-50G")` runs it,
and it reads the checkpoint with `torch.load(weights_only=True)` (workers/checkpoint.py): plain tensors and the
genotype JSON, so a tampered file that holds code is refused instead of run (tests/test_security.py).

`predict` takes the degraded images as a float array (N, C, H, W) in [0, 1] and returns the restored ones;
`unwrap_python_model().network` is the torch module, `.genotype` its architecture.
"""
from __future__ import annotations

from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class AclaModel(PythonModel):
    # Images are float arrays, checked by the network itself; MLflow's type-hint validation (which warns on
    # every class without hints) has no array type to offer, so it is skipped as MLflow skips it for ChatModel.
    _skip_type_hint_validation = True
    def load_context(self, context) -> None:
        from workers.checkpoint import model_from_checkpoint
        self.network, self.genotype, self.task, _ = model_from_checkpoint(context.artifacts["checkpoint"])
        self.network.eval()

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch
        with torch.no_grad():
            images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
            return self.network(images).clamp(0, 1).numpy()


set_model(AclaModel())
