"""Ensembles: members, the combined model, the model MLflow logs from code, the report."""
