from fracscan.triton_models import MemberModel as TritonPythonModel  # noqa: F401
