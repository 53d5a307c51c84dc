from fracscan.triton_models import PreprocessModel as TritonPythonModel  # noqa: F401
