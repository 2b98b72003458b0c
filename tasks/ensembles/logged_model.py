"""The registered ensemble as MLflow logs it from code (models from code: this file, not a pickled instance).

Its artifacts are one exported torch program (every member with its normalization, and the member weights
or the stacking meta-learner) and a JSON description. Raw inputs in, log-probabilities out: like a single
model's logits, argmax is the class and softmax gives the probabilities. Needs torch, numpy and mlflow only.
It scores on the device given at load (`mlflow.pyfunc.load_model(uri, model_config={"device": "cuda"})`; logged with
"cpu"): the program is moved there, weights and any node naming the device it was exported on.
"""

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from torch.export.passes import move_to_device_pass


class EnsembleModel(PythonModel):
    def load_context(self, context):
        self.device = torch.device((context.model_config or {}).get("device") or "cpu")
        program = torch.export.load(context.artifacts["program"])
        self.program = move_to_device_pass(program, self.device).module()
        self.about = json.loads(Path(context.artifacts["about"]).read_text())

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32)).to(self.device)
        with torch.no_grad():
            return self.program(x).cpu().numpy()


set_model(EnsembleModel())
