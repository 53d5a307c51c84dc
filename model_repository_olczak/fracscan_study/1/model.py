from fracscan.triton_models import StudyModel as TritonPythonModel  # noqa: F401
