from fracscan.triton_models import AverageModel as TritonPythonModel  # noqa: F401
