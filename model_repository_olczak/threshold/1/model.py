from fracscan.triton_models import ThresholdModel as TritonPythonModel  # noqa: F401
