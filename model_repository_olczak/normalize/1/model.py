from fracscan.triton_models import NormalizeModel as TritonPythonModel  # noqa: F401
