"""The registered ensemble as MLflow logs it from code (models from code: this file, not a pickled instance).

Its artifacts are one exported torch program (every member with its normalization, and the member weights
or the stacking meta-learner) and a JSON description. Raw inputs in, log-probabilities out: like a single
model's logits, argmax is the class and softmax gives the probabilities. Needs torch, numpy and mlflow only.
"""

import json
from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class EnsembleModel(PythonModel):
    def load_context(self, context):
        self.program = torch.export.load(context.artifacts["program"]).module()
        self.about = json.loads(Path(context.artifacts["about"]).read_text())

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.program(x).numpy()


set_model(EnsembleModel())
