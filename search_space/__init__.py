"""The method: ACLA attention, the EDSR-style backbone, the supernet, cost and the differentiable search.
Runs without Ray, MLflow or boto3."""
